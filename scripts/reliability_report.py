"""Run the fault-injection suite and write its figures into docs/reliability.md.

.venv/bin/python scripts/reliability_report.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"

# case -> (fault, how it is injected, what is checked)
CASES = {
    "test_backend_down_then_back_drains_in_order_without_duplicates": (
        "1. Backend down, then back",
        "port closed; a server starts on it later",
        "all queued drain, in order, no duplicates; `backend_recovered` logged",
    ),
    "test_503_storm_then_recovery": (
        "2. 503/502 storm (a deploy)",
        "backend answers 503 by default, then two 502s, then 200",
        "drain in order, no duplicates; one `backend_unavailable` line, not one per retry",
    ),
    "test_429_retry_after_is_respected_by_the_daemon": (
        "3. 429 with Retry-After",
        "one 429 with `Retry-After: 2` (backoff cap 0.5 s)",
        "no request before the time asked",
    ),
    "test_hung_backend_times_out_and_the_message_is_retried": (
        "4. Backend never answers",
        "accepts, reads, never responds; read timeout 1 s",
        "timeout logged, message retried and delivered; SIGTERM still exits in < 5 s (test_cli)",
    ),
    "test_connection_reset_mid_response": (
        "5. Reset mid-response",
        "half a response, then RST (SO_LINGER 0), twice",
        "retried with the same Idempotency-Key, delivered",
    ),
    "test_401_after_rotation_resumes_when_the_keychain_is_fixed": (
        "6. 401 after a secret rotation",
        "Keychain (real keyring backend) holds an old secret",
        "paused, queue kept, probes ≥ interval apart; fixed in the Keychain → resumes, no restart",
    ),
    "test_kill_9_storm_loses_nothing": (
        "8. kill -9 storm",
        "2,000 messages streamed at ~4 ms; SIGKILL at random 0.3–0.9 s, restart",
        "every message received; duplicates ≤ kills, each with the original Idempotency-Key",
    ),
    "test_kill_9_with_lanes_busy_resends_each_with_its_original_key": (
        "8b. kill -9 with lanes busy",
        "4 chats each waiting on an answer that never comes; SIGKILL, restart",
        "all 4 delivered, each with its first attempt's Idempotency-Key; duplicates ≤ in flight",
    ),
    "test_chatdb_absent_at_start_then_created": (
        "9. chat.db absent at start",
        "ARCHETY_CHAT_DB points at a path created later",
        "daemon waits with `chatdb_unavailable` + Full Disk Access hint, no exit; then flows",
    ),
    "test_chatdb_replaced_rebases_the_cursor_without_replay": (
        "10. chat.db replaced",
        "file swapped for another database with lower MAX(ROWID)",
        "`chatdb_replaced_cursor_rebased` warning; history older than the last row seen not "
        "replayed; new rows flow",
    ),
    "test_state_disk_full_holds_the_cursor_until_space_returns": (
        "12. State disk full",
        "state dir on a 2 MB tmpfs filled by a filler file",
        "`capture_failed` with hint; cursor held; all delivered once space returns",
    ),
    "test_corrupt_outbox_is_moved_aside_and_the_relay_starts_fresh": (
        "13. Corrupt outbox",
        "outbox.db overwritten with garbage; in test_state, its header damaged under 3 queued "
        "messages and a scheduled send",
        "moved aside by `run`/`--once` only (`status`, `doctor`, `retry-dead`, `purge-dead` exit 6 "
        "and change nothing); readable rows carried into the fresh file (header rebuilt if "
        "needed), `state_reset` in `status`; garbage: nothing to carry, capture resumes from the "
        "rows dated since the file's last write (not MAX(ROWID))",
    ),
    "test_wal_checkpoints_are_never_blocked": (
        "14. WAL checkpoints",
        "writer runs `wal_checkpoint(TRUNCATE)` every 10 messages under load",
        "every checkpoint completes (busy = 0); chat.db-wal ends at 0 bytes",
    ),
    "test_burst_of_5000_in_one_transaction": (
        "15. Burst of 5,000 rows",
        "one transaction of 5,000 messages",
        "each delivered exactly once, in order; peak RSS bounded (< 150 MB asserted)",
    ),
    "test_bad_rows_nothing_lost_nothing_stopped": (
        "21. Bad rows: nothing lost, nothing stopped",
        "16 damaged rows between ordinary ones: text not UTF-8 / NUL / INTEGER / BLOB / 3 MB, "
        "garbage attributedBody, guid not UTF-8 / CR LF / outside latin-1, date in year 33689 or "
        "TEXT, dangling handle, TEXT is_from_me, huge associated type, garbage summary info, "
        "no chat join",
        "every ordinary message once and in order; damaged rows with intact text arrive too; "
        "no duplicate; no `delivery_loop_failed`; SIGTERM exits 0",
    ),
    "test_bad_answers_nothing_lost_nothing_stopped": (
        "22. Bad answers: nothing lost, nothing stopped",
        "14 answers, one per message: JSON nested 5,000 deep, 3 MB, HTML, invalid UTF-8, lone "
        "surrogate, NUL, wrong types, NaN, slow, reset, 503, 429 with garbage Retry-After, "
        "422 echoing the text, 400 with escape sequences",
        "every 2xx recorded once, never posted again; the 422 and 400 are dead letters that "
        "`status` shows scrubbed and escaped; the daemon keeps going",
    ),
    "test_bad_commands_nothing_lost_nothing_stopped": (
        "23. Bad commands: nothing lost, nothing stopped",
        "sync answers with 22 poison commands (infinite / huge / 5,000-digit ids, years 1 and "
        "9999, naive time, `-e` and NUL chat guids, NUL / surrogate / 200 KB text, wrong types, "
        "a repeat), then nested 5,000 deep, 3 MB, wrong shape, not JSON",
        "each command id answered by exactly one event; good ones complete once; syncs go on; "
        "messages keep flowing",
    ),
    "test_quick_edits_are_never_taken_for_the_original": (
        "28. Quick edits",
        "20 messages, each edited 0–40 ms after it was written, while the daemon runs",
        "every edited text reaches the backend, in the message (edited before capture read it) "
        "or in one `message_edited` event (edited after); none taken for the original",
    ),
    "test_a_refused_stranger_never_slows_the_other_chats": (
        '29. One sender refused (404 "User not found")',
        "backend answers 404 to one stranger: 2 messages, then 2 more while 3 other chats "
        "write 4 each (default 60 s probe interval)",
        "the others delivered in order as they come, no pause, no `backend_rejecting_everything`; "
        "the stranger's messages dead letters, each refused once (review 2026-12-04 #1)",
    ),
}
STEP_CASES = [
    (
        "7. Poisoned message (400/422)",
        "test_delivery / test_cli",
        "dead-lettered with the response; the queue goes on; `status` lists it, `retry-dead` re-queues",
    ),
    (
        "11. Corrupt input",
        "test_typedstream / test_forwarding",
        "10,000 random, truncated and bit-flipped blobs; NULL in every column; unknown chat style; "
        "missing handle and chat join: no crash, forwarded or skipped with a reason",
    ),
    (
        "12b. SQLITE_FULL",
        "test_delivery",
        "max_page_count reached: StateError, cursor unchanged, all 50 messages delivered after",
    ),
    (
        "16. Clock jumps",
        "test_delivery",
        "a leap of hours sends one request, not a storm; a wall "
        "clock stepping back does not strand a row waiting for its chat join",
    ),
    (
        "17. Poison in chat.db",
        "test_faults_chatdb",
        "TEXT that is not UTF-8 in `message.text` (daemon, review #1), `handle.id`, `chat.guid`, "
        "`chat.chat_identifier`, `attachment.transfer_name`; a BLOB where text belongs; odd "
        "from-me rows in the send checks: nothing lost, nothing stopped, no text in the log, "
        "Full Disk Access not blamed",
    ),
    (
        "18. Rows filled in late",
        "test_faults_chatdb",
        "text or attachment written after the row; a group row whose chat join is late or "
        "never comes; an RCS row without its join on macOS 26 (`any;-;`): held, then forwarded "
        "to the real chat or skipped with a warning, never sent to an invented chat",
    ),
    (
        "19. chat.db rewritten or rebuilt",
        "test_faults_chatdb",
        "same identifier, new inode: the cursor is kept; a rebuilt database with new rows below "
        "the old MAX(ROWID): the rows since the last one seen go out, delivered ones not again",
    ),
    (
        "20. Damaged state file",
        "test_state",
        "header damaged under a queue: lookers exit 6 and change nothing; `--once` salvages the "
        "queue, scheduled send and cursor and delivers everything",
    ),
    (
        "21b. Backend never acks events, sync always fails",
        "test_state",
        "newer events still go out (paging); old state still pruned on its own timer",
    ),
    (
        "24. One chat's message keeps failing (5xx)",
        "test_lanes",
        "only that chat waits; after ARCHETY_POISON_ATTEMPTS it is a dead letter and the chat goes "
        "on; every other chat delivered meanwhile; `skip-head` does it by hand",
    ),
    (
        "25. A hung answer / 429 in one chat",
        "test_lanes",
        "the other chats flow; the hung chat's next message never overtakes; 429 holds only its "
        "chat, never shorter than Retry-After",
    ),
    (
        "26. 404 storm (a redeploy) vs. one refused sender",
        "test_refusals",
        "refusals alike from 3 distinct chats and senders (5 for other 4xx): pause, the "
        "dead-lettered ones put back keeping their attempts, the probe never one of them, all "
        "delivered in chat order once the backend answers; one sender's 404s or 422s (also in "
        "3 groups) are dead letters and nobody waits; refused again after the pause: dead letter, "
        "no second pause",
    ),
    (
        "27. 2xx that cannot be recorded",
        "test_lanes",
        "the state file is locked after the backend accepted: only the write is retried, the "
        "backend sees the message once",
    ),
]


def main() -> int:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as tmp:
        out = Path(tmp.name)
    env = {**os.environ, "ARCHETY_RELIABILITY_OUT": str(out)}
    started = datetime.now(timezone.utc)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/delivery/test_faults.py",
        ],
        cwd=ROOT,
        env=env,
    )
    rows = {}
    for line in out.read_text().splitlines():
        data = json.loads(line)
        rows[data.pop("case")] = data
    lines = [
        "# Reliability: fault injection",
        "",
        "Every fault below is injected for real: a loopback backend that misbehaves on command,",
        "the relay in a subprocess as launchd runs it, a chat.db written the way Messages.app",
        "writes it. Each row is a test in `tests/delivery/test_faults.py` (or the steps-level",
        "tests named) that passes in CI; the figures come from one run of",
        "`scripts/reliability_report.py`.",
        "",
        f"Run: {started:%Y-%m-%d %H:%M} UTC on {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"pytest exit {result.returncode}.",
        "",
        "| fault | injected by | checked | sent | received | duplicates | figures |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, (fault, how, checked) in CASES.items():
        fig = dict(rows.get(case, {}))
        sent, received, dup = (fig.pop(k, "—") for k in ("sent", "received", "duplicates"))
        extra = ", ".join(f"{k}={v}" for k, v in fig.items()) or (
            "not run" if case not in rows else ""
        )
        lines.append(f"| {fault} | {how} | {checked} | {sent} | {received} | {dup} | {extra} |")
    lines += [
        "",
        "Cases proven at the steps level (exact times, no sleeping):",
        "",
        "| fault | tests | checked |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in STEP_CASES]
    lines += [
        "",
        "`duplicates` counts messages the backend accepted more than once. Each repeat",
        "carries the original's `Idempotency-Key`, so the backend can drop it. The window",
        "is a kill between the backend's 2xx and the outbox commit that removes the row. With",
        "chats delivered side by side a kill can catch up to ARCHETY_MAX_IN_FLIGHT (16) messages",
        "in that window, so the duplicates of one kill are at most the messages in flight.",
        "",
    ]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(lines))
    out.unlink()
    print(f"wrote {DOC}")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
