"""Fault injection: each fault is made for real, and nothing a person sent may be lost.

The relay runs as a subprocess (as under launchd) against a loopback backend that misbehaves on
command and a chat.db written the way Messages.app writes it. Each case records its figures for
docs/reliability.md (set ARCHETY_RELIABILITY_OUT=path to collect them).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ALICE, BOB, RelayProcess, accepted_texts, log_events, run_cli, wait_until

from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend

MSG = "/orchestrator/message"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_numbered(writer: MessagesWriter, n: int, prefix: str = "m") -> list[str]:
    chat = writer.direct_chat(ALICE)
    texts = [f"{prefix}{i:05d}" for i in range(n)]
    for text in texts:
        writer.message(text, sender=ALICE, chat=chat)
    return texts


def test_backend_down_then_back_drains_in_order_without_duplicates(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    secret: str,
    figures: Callable[..., None],
) -> None:
    """Port closed while 30 messages arrive; when the backend comes up they all go, in order."""
    port = free_port()
    writer.direct_chat(ALICE)
    relay = start_relay({"ARCHETY_BACKEND_URL": f"http://127.0.0.1:{port}"})
    texts = write_numbered(writer, 30)
    assert wait_until(lambda: log_events(relay.log, "backend_unavailable"))
    time.sleep(1.5)
    with StubBackend(secret, port=port) as backend:
        up = time.monotonic()
        assert wait_until(lambda: len(backend.messages()) >= 30, timeout=20)
        drained = time.monotonic() - up
        time.sleep(0.3)
        assert accepted_texts(backend) == texts
    assert wait_until(lambda: log_events(relay.log, "backend_recovered"))
    figures(sent=30, received=30, duplicates=0, drain_s=round(drained, 2))


def test_503_storm_then_recovery(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """A deploy answering 503/502 for a while: everything drains afterwards, once, in order."""
    backend.set_default(MSG, Behaviour(503))
    writer.direct_chat(ALICE)
    relay = start_relay()
    texts = write_numbered(writer, 25)
    assert wait_until(lambda: len(backend.requests_to(MSG)) >= 4)
    backend.script(MSG, Behaviour(502), Behaviour(502))
    backend.set_default(MSG, None)
    up = time.monotonic()
    assert wait_until(lambda: len(backend.messages()) >= 25, timeout=20)
    drained = time.monotonic() - up
    time.sleep(0.3)
    assert accepted_texts(backend) == texts
    rejected = len(backend.requests_to(MSG)) - 25
    assert len(log_events(relay.log, "backend_unavailable")) == 1  # rate-limited, not per retry
    figures(sent=25, received=25, duplicates=0, failed_attempts=rejected, drain_s=round(drained, 2))


def test_429_retry_after_is_respected_by_the_daemon(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """Retry-After: 2 means no request for 2 s, although the backoff cap is 0.5 s here."""
    backend.script(MSG, Behaviour(429, headers={"Retry-After": "2"}))
    writer.direct_chat(ALICE)
    start_relay()
    write_numbered(writer, 1)
    backend.wait_for_messages(1, timeout=10)
    first, second = backend.requests_to(MSG)[:2]
    gap = second.at - first.at
    assert gap >= 2.0
    figures(sent=1, received=1, duplicates=0, retry_after_s=2, observed_gap_s=round(gap, 2))


def test_hung_backend_times_out_and_the_message_is_retried(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """Accepts, never answers: the read timeout fires, the retry succeeds."""
    backend.script(MSG, Behaviour(hang=True))
    writer.direct_chat(ALICE)
    relay = start_relay({"ARCHETY_READ_TIMEOUT": "1"})
    texts = write_numbered(writer, 2)
    backend.wait_for_messages(2, timeout=15)
    assert accepted_texts(backend) == texts
    attempts = log_events(relay.log, "message_delivery_attempt")
    assert attempts[0]["error"] == "timeout"
    figures(sent=2, received=2, duplicates=0, read_timeout_s=1)


def test_connection_reset_mid_response(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """The backend resets the connection after half a response: retried, delivered once more."""
    backend.script(MSG, Behaviour(reset=True), Behaviour(reset=True))
    writer.direct_chat(ALICE)
    start_relay()
    texts = write_numbered(writer, 3)
    backend.wait_for_messages(3, timeout=15)
    assert accepted_texts(backend) == texts
    keys = [r.headers["Idempotency-Key"] for r in backend.requests_to(MSG)]
    assert keys[0] == keys[1] == keys[2]  # the reset attempts and the success: one message
    figures(sent=3, received=3, duplicates=0, resets=2)


def test_401_after_rotation_resumes_when_the_keychain_is_fixed(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    tmp_path: Path,
    secret: str,
    figures: Callable[..., None],
) -> None:
    """Secret in the Keychain is rotated on the backend: pause, keep, probe; fix it, it flows."""
    keyring_file = tmp_path / "keyring.json"
    keyring_file.write_text('{"relay-webhook-secret/archety-relay": "old-secret"}')
    writer.direct_chat(ALICE)
    tests_dir = str(Path(__file__).parents[1])
    relay = start_relay(
        {
            "RELAY_WEBHOOK_SECRET": "",
            "PYTHON_KEYRING_BACKEND": "keyring_backends.FileKeyring",
            "TEST_KEYRING_FILE": str(keyring_file),
            "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]),
            "ARCHETY_AUTH_PROBE_INTERVAL": "1",
        }
    )
    texts = write_numbered(writer, 3)
    assert wait_until(lambda: len(log_events(relay.log, "auth_rejected")) >= 2, timeout=10)
    probes = [r.at for r in backend.requests_to(MSG)]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(probes))
    keyring_file.write_text(f'{{"relay-webhook-secret/archety-relay": "{secret}"}}')
    backend.wait_for_messages(3, timeout=10)
    assert accepted_texts(backend) == texts
    assert wait_until(lambda: log_events(relay.log, "auth_recovered"))
    assert secret not in relay.log.read_text()
    figures(sent=3, received=3, duplicates=0, probes_while_rejected=len(probes))


@pytest.mark.slow
def test_kill_9_storm_loses_nothing(
    env: dict[str, str],
    tmp_path: Path,
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """2,000 messages stream in while the relay is killed -9 at random moments, 20+ times.

    Nothing is lost; duplicates are at most one per kill, and each repeats the original's
    Idempotency-Key, so the backend can drop it.
    """
    chat = writer.direct_chat(ALICE)
    total = 2000
    texts = [f"k{i:05d}" for i in range(total)]
    run_cli(["--once"], env, cwd=tmp_path)  # place the cursor before the stream starts
    done = threading.Event()

    def stream() -> None:
        for text in texts:
            writer.message(text, sender=ALICE, chat=chat)
            time.sleep(0.004)
        done.set()

    rng = random.Random(7)
    kills = 0
    streamer = threading.Thread(target=stream)
    streamer.start()
    started = time.monotonic()
    while kills < 20 or not done.is_set():
        relay = RelayProcess(env, tmp_path)
        time.sleep(rng.uniform(0.3, 0.9))
        relay.kill9()
        relay.stop()
        kills += 1
    streamer.join()
    final = RelayProcess(env, tmp_path)
    try:
        assert wait_until(
            lambda: len({r.body["text"] for r in backend.messages()}) >= total, timeout=60
        )
        drained = time.monotonic() - started
    finally:
        final.terminate()
        final.stop()
    received = [r.body["text"] for r in backend.messages()]
    counts = Counter(received)
    assert set(counts) == set(texts)
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= kills
    for r in backend.messages():
        assert r.headers["Idempotency-Key"] == r.body["message_guid"]
    order = [t for t in received if counts[t] == 1]
    assert order == sorted(order)
    figures(
        sent=total,
        received=len(received),
        duplicates=duplicates,
        kills=kills,
        drain_s=round(drained, 1),
    )


def test_chatdb_absent_at_start_then_created(
    start_relay: Callable[..., RelayProcess],
    env: dict[str, str],
    tmp_path: Path,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """Messages never opened: the daemon waits with a clear line, no crash; then it flows."""
    db = tmp_path / "later" / "chat.db"
    relay = start_relay({"ARCHETY_CHAT_DB": str(db)}, ready=False)
    assert wait_until(lambda: log_events(relay.log, "chatdb_unavailable"), timeout=10)
    (line,) = log_events(relay.log, "chatdb_unavailable")[:1]
    assert "Full Disk Access" in line["hint"]
    assert relay.proc.poll() is None
    db.parent.mkdir()
    with MessagesWriter(db) as writer:
        assert wait_until(lambda: log_events(relay.log, "relay_ready"), timeout=20)
        write_numbered(writer, 2)
        backend.wait_for_messages(2)
    assert accepted_texts(backend) == ["m00000", "m00001"]
    assert log_events(relay.log, "chatdb_unavailable_recovered")
    figures(sent=2, received=2, duplicates=0)


def test_chatdb_replaced_rebases_the_cursor_without_replay(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """A restored chat.db (new inode, lower MAX(ROWID)): a warning; its history, older than the
    last row seen, is not replayed; new rows flow."""
    relay = start_relay()
    write_numbered(writer, 5, prefix="old")
    backend.wait_for_messages(5)
    restored = writer.path.with_name("restored.db")
    with MessagesWriter(restored) as other:
        chat = other.direct_chat(ALICE)
        for i in range(2):
            other.message(f"history{i}", sender=ALICE, chat=chat, sent_at=time.time() - 3600)
    for suffix in ("", "-wal", "-shm"):
        Path(str(writer.path) + suffix).unlink(missing_ok=True)
    writer.close()
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(restored) + suffix)
        if src.exists():
            src.rename(Path(str(writer.path) + suffix))
    assert wait_until(lambda: log_events(relay.log, "chatdb_replaced_cursor_rebased"), 10)
    with MessagesWriter(writer.path) as fresh:
        write_numbered(fresh, 2, prefix="new")
        backend.wait_for_messages(7)
    time.sleep(0.3)
    assert accepted_texts(backend)[5:] == ["new00000", "new00001"]
    figures(sent=7, received=7, duplicates=0, replayed=0)


def test_state_disk_full_holds_the_cursor_until_space_returns(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
    figures: Callable[..., None],
) -> None:
    """The state directory on a full filesystem: a clear error, and once space is back, all go."""
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        writer.direct_chat(ALICE)
        relay = start_relay({"ARCHETY_STATE_DIR": str(mount / "state")})
        filler = mount / "filler"
        # Unbuffered: nothing is left in a buffer for close() to fail writing on a full disk.
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        texts = write_numbered(writer, 20, prefix="x" * 2000)
        assert wait_until(lambda: log_events(relay.log, "capture_failed"), timeout=10)
        (failed,) = log_events(relay.log, "capture_failed")[:1]
        assert "ARCHETY_STATE_DIR" in failed["hint"]
        filler.unlink()
        backend.wait_for_messages(20, timeout=30)
        assert accepted_texts(backend) == texts
        relay.terminate()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    figures(sent=20, received=20, duplicates=0)


def test_corrupt_outbox_is_moved_aside_and_the_relay_starts_fresh(
    env: dict[str, str],
    tmp_path: Path,
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """Garbage in outbox.db, last written two hours ago: a loud warning, the file kept aside,
    nothing to salvage. Capture resumes from the rows dated since that last write (the one that
    came while the state was broken goes out), not from MAX(ROWID); older history stays put."""
    state = Path(env["ARCHETY_STATE_DIR"])
    state.mkdir(parents=True)
    outbox = state / "outbox.db"
    outbox.write_bytes(b"this is not a database" * 100)
    two_hours_ago = time.time() - 7200
    os.utime(outbox, (two_hours_ago, two_hours_ago))
    chat = writer.direct_chat(ALICE)
    for i in range(3):
        writer.message(f"history{i}", sender=ALICE, chat=chat, sent_at=time.time() - 3 * 3600)
    writer.message("while broken", sender=ALICE, chat=chat, sent_at=time.time() - 3600)
    result = run_cli(["--once"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(state.glob("outbox.db.corrupt-*"))
    assert log_events(Path(env["ARCHETY_LOG_FILE"]), "outbox_corrupt_moved_aside")
    write_numbered(writer, 1, prefix="after")
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    assert accepted_texts(backend) == ["while broken", "after00000"]
    figures(sent=2, received=2, duplicates=0, replayed=0)


def test_wal_checkpoints_are_never_blocked(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """While the relay reads under load, Messages' TRUNCATE checkpoint always completes."""
    chat = writer.direct_chat(ALICE)
    start_relay()
    wal = Path(str(writer.path) + "-wal")
    results = []
    for i in range(300):
        writer.message(f"w{i}", sender=ALICE, chat=chat)
        if i % 10 == 9:
            results.append(writer.checkpoint())
    backend.wait_for_messages(300, timeout=30)
    results.append(writer.checkpoint())
    assert all(busy == 0 for busy, _, _ in results)
    assert wal.stat().st_size == 0
    figures(
        sent=300,
        received=len(backend.messages()),
        duplicates=0,
        checkpoints=len(results),
        blocked=0,
    )


@pytest.mark.slow
def test_burst_of_5000_in_one_transaction(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """5,000 rows committed at once: each delivered exactly once, memory bounded."""
    chat = writer.direct_chat(ALICE)
    relay = start_relay()
    texts = [f"b{i:05d}" for i in range(5000)]
    started = time.monotonic()
    writer.burst(texts, sender=ALICE, chat=chat)
    assert wait_until(lambda: len(backend.messages()) >= 5000, timeout=120)
    took = time.monotonic() - started
    status = Path(f"/proc/{relay.proc.pid}/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    time.sleep(0.3)
    assert accepted_texts(backend) == texts
    assert peak_kb < 150_000
    figures(
        sent=5000,
        received=5000,
        duplicates=0,
        drain_s=round(took, 2),
        per_s=round(5000 / took),
        peak_rss_mb=round(peak_kb / 1024, 1),
    )


def test_kill_9_with_lanes_busy_resends_each_with_its_original_key(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """Four chats are waiting on answers when the relay is killed: after a restart every one
    of them is delivered, each with the Idempotency-Key of its first attempt, and the number
    of duplicates is at most the number that were in flight."""
    people = [f"+1555555{n:04d}" for n in range(200, 204)]
    for person in people:
        writer.direct_chat(person)
    backend.respond_with(MSG, lambda body: Behaviour(hang=True))
    relay = start_relay({"ARCHETY_READ_TIMEOUT": "60"})
    for person in people:
        writer.message(f"from {person[-4:]}", sender=person, chat=writer.direct_chat(person))
    assert wait_until(lambda: len(backend.messages(accepted_only=False)) == 4, 20)
    first_keys = {
        r.body["message_guid"]: r.headers["Idempotency-Key"]
        for r in backend.messages(accepted_only=False)
    }
    relay.kill9()
    backend.respond_with(MSG, lambda body: None)
    start_relay()
    delivered = backend.wait_for_messages(4, timeout=20)
    assert sorted(r.body["text"] for r in delivered) == sorted(f"from {p[-4:]}" for p in people)
    for r in delivered:
        assert r.headers["Idempotency-Key"] == first_keys[r.body["message_guid"]]
    attempts = len(backend.messages(accepted_only=False))
    assert attempts - 4 <= 4  # duplicates: at most one per message that was in flight
    accepted = backend.messages()
    figures(
        sent=4,
        received=len({r.body["message_guid"] for r in accepted}),
        duplicates=len(accepted) - len({r.body["message_guid"] for r in accepted}),
        in_flight_at_kill=4,
    )


# -- poison: one bad value from outside must never lose or stop anything else ---------------------
# (name, SQL applied to the poisoned row `?` or None, whether its own text must still arrive)
BAD_ROWS: list[tuple[str, str | None, bool]] = [
    (
        "text not UTF-8",
        "UPDATE message SET text = CAST(X'68C328FF' AS TEXT) WHERE ROWID = ?",
        False,
    ),
    ("text with NUL", "UPDATE message SET text = 'a' || char(0) || 'b' WHERE ROWID = ?", False),
    ("text an INTEGER", "UPDATE message SET text = 12345 WHERE ROWID = ?", False),
    ("text a BLOB", "UPDATE message SET text = CAST('blob text' AS BLOB) WHERE ROWID = ?", False),
    (
        "text of 3 MB",
        "UPDATE message SET text = printf('%.*c', 3000000, 'x') WHERE ROWID = ?",
        False,
    ),
    (
        "attributedBody garbage",
        "UPDATE message SET text = NULL, attributedBody = randomblob(5000) WHERE ROWID = ?",
        False,
    ),
    ("guid not UTF-8", "UPDATE message SET guid = CAST(X'FFFE' AS TEXT) WHERE ROWID = ?", True),
    (
        "guid with CR LF",
        "UPDATE message SET guid = 'g' || char(13, 10) || 'X: 1' WHERE ROWID = ?",
        True,
    ),
    ("guid outside latin-1", "UPDATE message SET guid = 'g-' || char(8364) WHERE ROWID = ?", True),
    ("date in year 33689", "UPDATE message SET date = 1000000000000 WHERE ROWID = ?", True),
    ("date as TEXT", "UPDATE message SET date = 'yesterday' WHERE ROWID = ?", True),
    ("handle_id dangling", "UPDATE message SET handle_id = 99999 WHERE ROWID = ?", False),
    ("is_from_me as TEXT", "UPDATE message SET is_from_me = 'no' WHERE ROWID = ?", False),
    (
        "huge associated type",
        "UPDATE message SET associated_message_type = 1 << 62 WHERE ROWID = ?",
        False,
    ),
    (
        "summary info garbage, edited",
        "UPDATE message SET message_summary_info = randomblob(64), date_edited = 1 WHERE ROWID = ?",
        True,
    ),
    ("chat join never written", None, True),
]


def test_bad_rows_nothing_lost_nothing_stopped(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """Rows damaged in every way chat.db's loose typing allows, each between two ordinary
    messages, all waiting when the daemon starts: every ordinary message arrives once, in order;
    a damaged row with its text intact arrives too; nothing is posted twice; the daemon keeps
    running and stops cleanly."""
    chat = writer.direct_chat(ALICE)
    relay = start_relay()
    assert relay.terminate()[0] == 0  # the cursor is placed; what follows is new
    good: list[str] = []
    must_arrive: list[str] = []
    for i, (name, sql, keeps_text) in enumerate(BAD_ROWS):
        good.append(f"good {i:02d}")
        writer.message(good[-1], sender=ALICE, chat=chat)
        rowid = writer.message(f"poison: {name}", sender=ALICE, chat=chat, join_chat=bool(sql))
        if sql:
            writer.conn.execute(sql, (rowid,))
        if keeps_text:
            must_arrive.append(f"poison: {name}")
    good.append("good last")
    writer.message(good[-1], sender=ALICE, chat=chat)
    relay = start_relay()
    assert wait_until(
        lambda: set(good + must_arrive) <= set(accepted_texts(backend)), timeout=30
    ), sorted(set(good + must_arrive) - set(accepted_texts(backend)))
    time.sleep(0.5)
    received = accepted_texts(backend)
    assert [t for t in received if t in good] == good
    keys = Counter(r.headers["Idempotency-Key"] for r in backend.messages())
    assert max(keys.values()) == 1
    assert not log_events(relay.log, "delivery_loop_failed")
    assert relay.proc.poll() is None and relay.terminate()[0] == 0
    figures(
        sent=len(good) + len(BAD_ROWS),
        received=len(received),
        duplicates=0,
        bad_rows=len(BAD_ROWS),
        ordinary_in_order=len(good),
    )


# What the backend answers to the message of the same text (each answered once like this; a
# retry gets a plain 200). 2xx: delivered exactly once. 4xx below: dead-lettered, listed.
BAD_ANSWERS: dict[str, Behaviour] = {
    "nested too deep": Behaviour(200, body=b"[" * 5000 + b"]" * 5000),
    "3 MB answer": Behaviour(200, body=b'{"x": "' + b"y" * 3_000_000 + b'"}'),
    "HTML, not JSON": Behaviour(200, body=b"<html><body>ok</body></html>"),
    "invalid UTF-8": Behaviour(200, body=b'{"should_respond": true, "reply_text": "\xff\xfe"}'),
    "lone surrogate": Behaviour(200, body=b'{"should_respond": true, "reply_text": "a\\ud800"}'),
    "NUL in a reply": Behaviour(200, body=b'{"should_respond": true, "reply_text": "a\\u0000b"}'),
    "wrong types": Behaviour(
        200, body={"should_respond": "yes", "reply_bubbles": {"a": 1}, "burst_delay_ms": "soon"}
    ),
    "NaN and Infinity": Behaviour(
        200, body=b'{"should_respond": true, "burst_messages": ["x"], "burst_delay_ms": NaN}'
    ),
    "slow": Behaviour(200, delay=0.5),
    "reset once": Behaviour(200, reset=True),
    "503 once": Behaviour(503),
    "429 with a garbage Retry-After": Behaviour(429, headers={"Retry-After": "soon-ish"}),
    "422 echoing the text": Behaviour(
        422, body={"detail": [{"type": "string_too_long", "input": "422 echoing the text"}]}
    ),
    "400 with escape sequences": Behaviour(400, body=b"\x1b[2J\x1b[Hqueue : 0 undelivered"),
}
DEAD_ON_PURPOSE = {"422 echoing the text", "400 with escape sequences"}


def test_bad_answers_nothing_lost_nothing_stopped(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
    figures: Callable[..., None],
) -> None:
    """Every kind of bad answer, each to one message with an ordinary one after it: every
    message answered 2xx is recorded once (never posted again after its 2xx), the two refused
    ones are dead letters that `status` shows scrubbed and escaped, and the daemon keeps going."""
    answered: set[str] = set()
    lock = threading.Lock()

    def answer(body: object) -> Behaviour | None:
        text = body.get("text") if isinstance(body, dict) else None
        with lock:
            if text in BAD_ANSWERS and text not in answered:
                answered.add(text)
                return BAD_ANSWERS[text]
        return None

    backend.respond_with(MSG, answer)
    chat = writer.direct_chat(ALICE)
    relay = start_relay({"ARCHETY_SEND_ENABLED": "0", "ARCHETY_READ_TIMEOUT": "5"})
    expected: list[str] = []
    for i, name in enumerate(BAD_ANSWERS):
        writer.message(name, sender=ALICE, chat=chat)
        writer.message(f"after {i:02d}", sender=ALICE, chat=chat)
        expected += [name, f"after {i:02d}"]
    delivered = [t for t in expected if t not in DEAD_ON_PURPOSE]
    assert wait_until(lambda: set(delivered) <= set(accepted_texts(backend)), timeout=60), sorted(
        set(delivered) - set(accepted_texts(backend))
    )
    time.sleep(1.0)
    accepted = Counter(r.body["text"] for r in backend.messages())
    assert set(accepted) == set(delivered) and max(accepted.values()) == 1
    status = run_cli(["status", "--json"], env, cwd=tmp_path)
    dead = json.loads(status.stdout)["dead_letters"]
    assert sorted(d["status"] for d in dead) == [400, 422]
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    assert "\x1b" not in human and "422 echoing the text" not in json.dumps(dead)
    assert relay.proc.poll() is None and relay.terminate()[0] == 0
    figures(
        sent=len(expected),
        received=sum(accepted.values()),
        duplicates=0,
        bad_answers=len(BAD_ANSWERS),
        dead_lettered=len(dead),
    )


def test_a_refused_stranger_never_slows_the_other_chats(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
    figures: Callable[..., None],
) -> None:
    """Review 2026-12-04 #1 as launchd runs it: the backend answers 404 "User not found" to a
    stranger. The stranger writes twice; then Alice, Bob and Carol write four messages each
    while the stranger writes twice more. Their twelve messages are delivered in order as they
    come (before the fix the stranger's two refusals paused every chat for the 60 s probe
    interval, again and again); the stranger's four are dead letters, each refused once;
    nothing is logged as an outage."""
    stranger, carol = "+15555550999", "+15555550303"
    people = (ALICE, BOB, carol)
    backend.respond_with(
        MSG,
        lambda body: (
            Behaviour(404, body={"detail": "User not found"})
            if body.get("sender") == stranger
            else None
        ),
    )
    chats = {person: writer.direct_chat(person) for person in (stranger, *people)}
    relay = start_relay({"ARCHETY_SEND_ENABLED": "0"})  # the default 60 s probe interval
    refused = lambda: [r for r in backend.messages(accepted_only=False) if r.status == 404]  # noqa: E731
    for text in ("stranger 1", "stranger 2"):
        writer.message(text, sender=stranger, chat=chats[stranger])
    assert wait_until(lambda: len(refused()) >= 2, timeout=10)
    written: dict[str, float] = {}
    for n in range(4):
        if n == 2:
            for text in ("stranger 3", "stranger 4"):
                writer.message(text, sender=stranger, chat=chats[stranger])
        for person in people:
            written[f"{person[-4:]} {n}"] = time.time()
            writer.message(f"{person[-4:]} {n}", sender=person, chat=chats[person])
        time.sleep(0.25)
    assert wait_until(lambda: len(backend.messages()) >= len(written), timeout=20), sorted(
        set(written) - set(accepted_texts(backend))
    )
    assert wait_until(lambda: len(refused()) >= 4, timeout=10)
    time.sleep(0.5)
    accepted = accepted_texts(backend)
    for person in people:
        assert [t for t in accepted if t.startswith(person[-4:])] == [
            f"{person[-4:]} {n}" for n in range(4)
        ]
    assert len(refused()) == 4  # each refused once: never put back, never a probe
    assert log_events(relay.log, "backend_rejecting_everything") == []
    dead = json.loads(run_cli(["status", "--json"], env, cwd=tmp_path).stdout)["dead_letters"]
    assert [d["status"] for d in dead] == [404] * 4
    latency = [r.at - written[r.body["text"]] for r in backend.messages()]
    figures(
        sent=len(written) + 4,
        received=len(accepted),
        duplicates=0,
        stranger_dead_letters=len(dead),
        pauses=0,
        others_max_latency_ms=round(max(latency) * 1000),
    )


SYNC = "/edge/sync"
CHAT = f"iMessage;-;{ALICE}"


def _cmd(command_id: object, kind: object, **params: object) -> dict[str, object]:
    return {"command_id": command_id, "command_type": kind, "params": params}


# command id -> the command; each must be answered by exactly one event, failed or completed.
BAD_COMMANDS: dict[str, dict[str, object]] = {
    "cancel-inf": _cmd("cancel-inf", "cancel_message", message_id=float("inf")),
    "cancel-huge": _cmd("cancel-huge", "cancel_message", message_id=10**40),
    "cancel-digits": _cmd("cancel-digits", "cancel_message", message_id="9" * 5000),
    "cancel-list": _cmd("cancel-list", "cancel_message", message_id=[1]),
    "at-year-1": _cmd(
        "at-year-1",
        "schedule_message",
        chat_guid=CHAT,
        text="x",
        send_at="0001-01-01T00:00:00+14:00",
    ),
    "at-year-9999": _cmd(
        "at-year-9999",
        "schedule_message",
        chat_guid=CHAT,
        text="x",
        send_at="9999-12-31T23:59:59-14:00",
    ),
    "at-naive": _cmd(
        "at-naive", "schedule_message", chat_guid=CHAT, text="x", send_at="2030-01-01T09:00:00"
    ),
    "guid-option": _cmd("guid-option", "send_message", chat_guid="-e", text="x"),
    "guid-nul": _cmd("guid-nul", "send_message", chat_guid=CHAT + "\u0000", text="x"),
    "text-nul": _cmd("text-nul", "send_message", chat_guid=CHAT, text="a\u0000b"),
    "text-surrogate": _cmd("text-surrogate", "send_message", chat_guid=CHAT, text="a\ud800b"),
    "text-huge": _cmd("text-huge", "send_message", chat_guid=CHAT, text="x" * 200_000),
    "type-number": _cmd("type-number", 7),
    "type-unknown": _cmd("type-unknown", "format_disk"),
    "params-list": {"command_id": "params-list", "command_type": "send_message", "params": [1]},
    "id-surrogate-\ud800": _cmd("id-surrogate-\ud800", "list_scheduled"),
    "good-list": _cmd("good-list", "list_scheduled"),
    "good-schedule": _cmd(
        "good-schedule",
        "schedule_message",
        chat_guid=CHAT,
        text="later",
        send_at="2099-01-01T09:00:00Z",
    ),
}
BAD_SYNC_ANSWERS = [
    json.dumps(
        {
            "commands": [
                *BAD_COMMANDS.values(),
                _cmd({"a": 1}, "list_scheduled"),
                _cmd(True, "list_scheduled"),
                "not a command",
                _cmd("good-list", "list_scheduled"),  # a repeat: ignored, not run twice
            ],
            "ack_events": [{"a": 1}, None, "\ud800"],
            "config_updates": {"sync_interval": "NaN", "heartbeat_interval": True},
        }
    ).encode(),
    b"[" * 5000 + b"]" * 5000,
    b'{"commands": "' + b"x" * 3_000_000 + b'"}',
    b'{"commands": "nope", "ack_events": {"x": 1}, "config_updates": [1]}',
    b"<html>502</html>",
]


def test_bad_commands_nothing_lost_nothing_stopped(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """Sync answers full of poison (non-finite, huge and out-of-range values, lone surrogates,
    NULs, wrong types, an option-like chat guid, a repeat), then one nested too deep, one of
    3 MB, one of the wrong shape and one not JSON: each command id is answered by exactly one
    event, the good ones complete once, syncs go on and messages keep flowing."""
    for answer in BAD_SYNC_ANSWERS:
        backend.script(SYNC, Behaviour(200, body=answer))
    chat = writer.direct_chat(ALICE)
    relay = start_relay({"ARCHETY_SYNC_INTERVAL": "1", "ARCHETY_SEND_ENABLED": "0"})
    writer.message("during the storm", sender=ALICE, chat=chat)

    event_ids: dict[str, set[str]] = {}

    def outcomes() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for request in backend.requests_to(SYNC):
            for event in (request.body or {}).get("events", []):
                if event.get("event_type") in ("command_failed", "command_completed"):
                    command_id = str(event.get("command_id"))
                    found.setdefault(command_id, set()).add(event["event_type"])
                    event_ids.setdefault(command_id, set()).add(event["event_id"])
        return found

    assert wait_until(
        lambda: len(backend.requests_to(SYNC)) > len(BAD_SYNC_ANSWERS) + 1, timeout=60
    )
    found = outcomes()
    answered = {k: v for k, v in found.items() if k[:8] in {c[:8] for c in BAD_COMMANDS}}
    assert len(answered) == len(BAD_COMMANDS), sorted(found)  # the surrogate id, respelled
    assert all(len(kinds) == 1 for kinds in answered.values()), answered
    assert found["good-list"] == found["good-schedule"] == {"command_completed"}
    assert len(event_ids["good-list"]) == 1  # its repeat in the same answer was not run again
    assert found["guid-option"] == found["cancel-inf"] == {"command_failed"}
    assert accepted_texts(backend) == ["during the storm"]
    assert not log_events(relay.log, "sync_loop_failed")
    assert relay.proc.poll() is None and relay.terminate()[0] == 0
    figures(
        sent=1,
        received=len(accepted_texts(backend)),
        duplicates=0,
        bad_commands=len(BAD_COMMANDS) + 4,
        bad_sync_answers=len(BAD_SYNC_ANSWERS),
    )


def test_quick_edits_are_never_taken_for_the_original(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """The quick-edit race, from outside: 20 messages, each edited 0–40 ms after it was
    written, while the daemon runs. For every one the backend ends up with the edited text:
    in the message itself (edited before the relay read it) or in a `message_edited` event
    (edited after), never neither."""
    chat = writer.direct_chat(ALICE)
    relay = start_relay({"ARCHETY_SYNC_INTERVAL": "3600"})
    rng = random.Random(21)
    final: dict[str, str] = {}
    for i in range(20):
        rowid = writer.message(f"quick {i:02d}", sender=ALICE, chat=chat)
        time.sleep(rng.uniform(0.0, 0.04))
        writer.edit(rowid, f"quick {i:02d}, edited")
        final[writer.guid_of(rowid)] = f"quick {i:02d}, edited"
        time.sleep(0.05)

    def known() -> dict[str, str]:
        texts = {r.body["message_guid"]: r.body["text"] for r in backend.messages()}
        for event in backend.sync_events():
            if event.get("event_type") == "message_edited":
                texts[event["message_guid"]] = event["details"]["text"]
        return texts

    assert wait_until(lambda: len(backend.messages()) >= 20, timeout=20)
    wait_until(lambda: all(known().get(g) == t for g, t in final.items()), timeout=15)
    lost = sorted(g for g, t in final.items() if known().get(g) != t)
    assert lost == [], f"{len(lost)} of 20 edits never reached the backend"
    edits = [e for e in backend.sync_events() if e.get("event_type") == "message_edited"]
    assert len({e["event_id"] for e in edits}) == len({e["message_guid"] for e in edits})
    posted_edited = sum(1 for r in backend.messages() if r.body["text"].endswith("edited"))
    assert relay.proc.poll() is None and relay.terminate()[0] == 0
    figures(
        sent=20,
        received=len(backend.messages()),
        duplicates=0,
        edits_lost=len(lost),
        edit_events=len({e["message_guid"] for e in edits}),
        edited_before_capture=posted_edited,
    )
