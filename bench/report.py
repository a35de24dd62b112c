"""Render bench/results/latest.json as docs/benchmarks.md and the README's headline table.

.venv/bin/python bench/run.py && .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def ms(v: float) -> str:
    return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def ratio(ours: float, theirs: float) -> str:
    return f"{theirs / ours:.0f}× faster" if ours and theirs > ours else f"{ours / theirs:.2f}×"


def headline(r: dict[str, Any]) -> list[str]:
    lat, base = r["latency"]["relay"], r["latency"]["baseline"]
    scale = r["scale"]["relay"]
    burst, fast = r["burst"], r["burst_fast_backend"]
    idle = r["idle"]
    lanes = r.get("lanes")
    lane_rows = []
    if lanes:
        sixteen = next(
            (c for c in lanes["chats"] if c["side_by_side"]["chats"] == 16), lanes["chats"][-1]
        )
        side, one = sixteen["side_by_side"], sixteen["one_at_a_time"]
        drain = lanes["drain"]
        lane_rows = [
            f"| {side['chats']} chats writing at once, {lanes['answer_s']:g} s answers: last one "
            f"at the backend after | {side['max_wait_s']:.2f} s | one at a time: "
            f"{one['max_wait_s']:.1f} s | ≤ 0.5 s |",
            f"| drain of {drain['messages']:,} queued over {drain['chats']} chats, "
            f"{drain['rtt_s'] * 1000:.0f} ms answers | {drain['side_by_side']['per_s']:.0f}/s "
            f"({drain['one_at_a_time']['seconds'] / drain['side_by_side']['seconds']:.1f}× one "
            f"at a time) | one at a time: {drain['one_at_a_time']['per_s']:.0f}/s | ≥ 8× |",
        ]
    return [
        "| figure | archety-relay | polling baseline | target |",
        "|---|---|---|---|",
        f"| latency p50 (commit → backend) | {ms(lat['p50_ms'])} | {ms(base['p50_ms'])} "
        f"({ratio(lat['p50_ms'], base['p50_ms'])}) | ≤ 20 ms |",
        f"| latency p99 | {ms(lat['p99_ms'])} | {ms(base['p99_ms'])} | ≤ 100 ms |",
        f"| latency p50 with {r['sizes']['history']:,} history rows | {ms(scale['p50_ms'])} "
        f"({scale['p50_ms'] / lat['p50_ms']:.2f}× the small database) | — | ≤ 1.5× |",
        f"| burst of {r['sizes']['burst']:,} in one transaction | {fast['relay']['per_s']:.0f}/s "
        f"({burst['relay']['per_s']:.0f}/s against the http.server stand-in) | "
        f"{fast['baseline']['per_s']:.0f}/s ({burst['baseline']['per_s']:.0f}/s) | ≥ 500/s |",
        *lane_rows,
        f"| idle CPU | {idle['relay']['cpu_s_per_min']:.2f} s/min | "
        f"{idle['baseline']['cpu_s_per_min']:.2f} s/min | ≤ 0.3 s/min |",
        f"| idle RSS | {idle['relay']['rss_mb']:.0f} MB | {idle['baseline']['rss_mb']:.0f} MB "
        "| ≤ 60 MB |",
        f"| `--once` with nothing to do | {r['startup']['median_s']:.2f} s | — | ≤ 0.5 s |",
        f"| attributedBody decode | {r['decode']['median_per_s'] / 1e6:.2f} M blobs/s | — | — |",
    ]


def lanes_section(r: dict[str, Any]) -> list[str]:
    lanes = r.get("lanes")
    if not lanes:
        return []
    drain = lanes["drain"]
    return [
        "## Chats side by side",
        "",
        "The orchestrator answers each message with the persona's reply, so a request lasts as "
        f"long as the model thinks: here the stand-in backend takes {lanes['answer_s']:g} s per "
        "answer. N people write at the same moment; the figure is the longest wait from the "
        "commit of a message to the backend receiving it. Same run, same relay: side by side is "
        "the default `ARCHETY_MAX_IN_FLIGHT=16`, one at a time is `ARCHETY_MAX_IN_FLIGHT=1` "
        "(how the relay worked before).",
        "",
        "| chats | side by side: longest wait | median | one at a time: longest wait | median |",
        "|---|---|---|---|---|",
        *[
            f"| {c['side_by_side']['chats']} | {c['side_by_side']['max_wait_s']:.2f} s | "
            f"{c['side_by_side']['median_wait_s']:.2f} s | "
            f"{c['one_at_a_time']['max_wait_s']:.1f} s | "
            f"{c['one_at_a_time']['median_wait_s']:.1f} s |"
            for c in lanes["chats"]
        ],
        "",
        "With more chats than lanes (32 > 16), the 17th chat waits for the first answer: the "
        "longest wait is then one answer time.",
        "",
        f"Drain after an outage: {drain['messages']:,} messages queued over {drain['chats']} "
        f"chats while the backend answered 503; then it answers again, each answer taking "
        f"{drain['rtt_s'] * 1000:.0f} ms. Time from recovery to the last message received.",
        "",
        "| | seconds | messages/s |",
        "|---|---|---|",
        f"| side by side | {drain['side_by_side']['seconds']:.1f} s | "
        f"{drain['side_by_side']['per_s']:.0f}/s |",
        f"| one at a time | {drain['one_at_a_time']['seconds']:.1f} s | "
        f"{drain['one_at_a_time']['per_s']:.0f}/s |",
        "",
        "Each lane keeps one keep-alive connection; a chat's next message starts only after the "
        "answer to the one before it (and its reply) is stored, so each chat stays in order. "
        "These figures are from Linux on a shared 2-core machine; the lanes do not depend on "
        "the platform's file events, so they should hold on the Mac.",
        "",
        "What lanes cost a single message: an A/B on 2026-11-28, the code before lanes (69517ea) "
        "against this one, alternating runs of the latency figure on the same busy machine: p50 "
        "3.0 / 3.1 ms before, 3.2–3.6 ms after. About 0.2 ms of that is the new re-read of "
        "recent rows for edits and unsends after each change (3.2–3.3 ms with it switched off), "
        "the rest the hand-over from the sender thread to a lane. A lane that finishes goes "
        "straight on to the next head itself, so a queue being drained pays no hand-over per "
        "message; the burst against the asyncio backend measured 1,345 / 1,156/s before and "
        "963–1,079/s after in alternating runs (cProfile of the in-process drain shows the "
        "time in requests and the socket, not in the lanes), within this machine's noise.",
        "",
    ]


def main() -> int:
    r = json.loads(RESULTS.read_text())
    m = r["machine"]
    table = headline(r)
    lat, base = r["latency"]["relay"], r["latency"]["baseline"]
    doc = [
        "# Benchmarks",
        "",
        f"Run {r['started']} on {m['system']}, {m['cpu']}, {m['cores']} cores, Python "
        f"{m['python']}: a shared, noisy machine, so compare the two relays measured in the same "
        "run and quote medians.",
        "",
        "```sh",
        ".venv/bin/python bench/run.py      # full run (several minutes) → bench/results/latest.json",
        ".venv/bin/python bench/report.py   # → this page and the README's table",
        ".venv/bin/python bench/run.py --smoke   # small sizes; CI runs this through pytest",
        "```",
        "",
        "Both relays run as subprocesses against a chat.db written the way Messages.app writes it "
        "and a loopback backend that records the arrival time of every request. The baseline "
        "(`bench/baseline_relay.py`) is the approach of the relay this one replaces: it polls "
        "chat.db once a second for `ROWID > last` and posts each row with `requests.post`. "
        "Rows carry their text in `message.text` too, so the baseline (which skips NULL text) "
        "sees every one.",
        "",
        *table,
        "",
        "## Latency",
        "",
        f"{r['sizes']['messages']} single messages, {r['sizes']['spacing_s'] * 1000:.0f} ms apart; "
        "time from the writer's commit to the request being read by the backend.",
        "",
        "| | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {ms(v['p50_ms'])} | {ms(v['p90_ms'])} | {ms(v['p99_ms'])} | "
            f"{ms(v['max_ms'])} |"
            for name, v in (
                ("archety-relay", lat),
                ("baseline", base),
                ("archety-relay, large chat.db", r["scale"]["relay"]),
            )
        ],
        "",
        "A file event from watchdog (inotify: these figures are from Linux) wakes the reader "
        "within a millisecond or two. On the Mac the relay uses watchdog's kqueue observer, "
        "because FSEvents reports a write to chat.db-wal only when Messages closes the file, "
        "which it never does; no Mac figure has been measured yet: `archety-relay status` there "
        "shows p50/p99 from each message's date to its capture, and whether file events or the "
        "1 s check noticed it. The WAL write that raises an event lands just before the commit "
        "becomes visible, so after an event that found nothing the reader looks again every "
        "2 ms for a quarter of a second instead of waiting for the next 1 s safety check.",
        "",
        "## Burst",
        "",
        "| | against the http.server stand-in | against a minimal asyncio backend | peak RSS |",
        "|---|---|---|---|",
        *[
            f"| {name} | {r['burst'][k]['per_s']:.0f}/s ({r['burst'][k]['seconds']:.1f} s) | "
            f"{r['burst_fast_backend'][k]['per_s']:.0f}/s "
            f"({r['burst_fast_backend'][k]['seconds']:.1f} s) | "
            f"{r['burst_fast_backend'][k]['peak_rss_mb']:.0f} MB |"
            for name, k in (("archety-relay", "relay"), ("baseline", "baseline"))
        ],
        "",
        "Profiling (cProfile of the delivery loop, 2,000 messages) showed the relay spends about "
        "1.2 ms per message, two thirds of it inside requests (preparing and sending the "
        "request, reading the answer), a quarter in the JSON log line, and little in SQLite. "
        "Against the stand-in backend both relays stop at the same ~500/s: that ceiling is "
        "`http.server` parsing headers in Python, not either relay, so the burst is also measured "
        "against `bench/fast_backend.py`. Before/after: the outbox went from "
        "`synchronous=FULL` to `NORMAL` (safe here because a batch and its cursor commit "
        "together: a power cut rolls back both and the rows are read again), which took the "
        "in-process drain from 508/s to 579/s. A second profile (in-process drain of 2,000 "
        "messages into the asyncio backend, median of 3) moved two more costs: the reply "
        "outcome now rides on the one `message_delivery_attempt` log line instead of a line of "
        "its own, and requests are prepared directly instead of through `session.post`'s "
        "settings merge: 637/s → 743/s. Reading the queue 64 rows at a time instead of one "
        "gained 4%, within noise, and was left out. Delivery stays one request at a time: the "
        "backend must see a chat's messages in order.",
        "",
        *lanes_section(r),
        "## Idle and start-up",
        "",
        f"Idle is CPU time over {r['sizes']['idle_s']:.0f} s with no messages, read from "
        "/proc: the relay wakes once a second for `PRAGMA data_version` and every few seconds "
        "to look at its queues. `--once` is timed end to end (a fresh Python process, imports, "
        "a heartbeat, a read, a sync); a bare `python -c pass` takes "
        f"{r['startup']['python_bare_median_s'] * 1000:.0f} ms on the same machine. "
        "Before/after: `-X importtime` showed `--once` importing every subcommand's module "
        "(the demo's HTTP server, the daemon's watchdog, doctor) for 276 ms of imports and "
        "0.42 s in all; commands are now imported only when they run: 100 ms of imports, "
        "about 0.22 s in all.",
        "",
    ]
    # Sections other scripts own (bench/photos.py) are kept as they are.
    old = DOC.read_text() if DOC.exists() else ""
    pattern = r"<!-- (\w+):begin -->.*?<!-- \1:end -->"
    kept = [m.group(0) for m in re.finditer(pattern, old, flags=re.S)]
    DOC.write_text("\n".join([*doc, *kept, ""]) if kept else "\n".join(doc))
    readme = README.read_text()
    block = "\n".join(
        [
            BEGIN,
            *table,
            "",
            f"Measured {r['started']} on {m['cores']} cores; "
            "details in [docs/benchmarks.md](docs/benchmarks.md).",
            END,
        ]
    )
    if BEGIN in readme:
        readme = re.sub(
            re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, readme, flags=re.S
        )
    README.write_text(readme)
    print(f"wrote {DOC}" + (" and the README table" if BEGIN in readme else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
