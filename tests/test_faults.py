"""Fault injection: each fault is made for real, and nothing a person sent may be lost.

The relay runs as a subprocess (as under launchd) against a loopback backend that misbehaves on
command and a chat.db written the way Messages.app writes it. Each case records its figures for
docs/reliability.md (set ARCHETY_RELIABILITY_OUT=path to collect them).
"""

from __future__ import annotations

import itertools
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
from conftest import ALICE, RelayProcess, accepted_texts, log_events, run_cli, wait_until

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
    tests_dir = str(Path(__file__).parent)
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
    """Garbage in outbox.db: a loud warning, the file kept aside, a fresh start at MAX(ROWID)."""
    state = Path(env["ARCHETY_STATE_DIR"])
    state.mkdir(parents=True)
    (state / "outbox.db").write_bytes(b"this is not a database" * 100)
    write_numbered(writer, 3, prefix="history")
    result = run_cli(["--once"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(state.glob("outbox.db.corrupt-*"))
    assert log_events(Path(env["ARCHETY_LOG_FILE"]), "outbox_corrupt_moved_aside")
    write_numbered(writer, 1, prefix="after")
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    assert accepted_texts(backend) == ["after00000"]
    figures(sent=1, received=1, duplicates=0, replayed=0)


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
