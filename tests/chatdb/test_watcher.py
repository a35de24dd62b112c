"""New messages are noticed at once, and a watcher that cannot start costs speed, not messages
(issue #12.1, review #27).

The observer choice is a function of the platform; the daemon takes the platform as a seam, so
here on Linux asking for macOS's kqueue observer is a watcher that really cannot start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import structlog.testing
from conftest import ALICE, RelayProcess, accepted_texts, run_cli, wait_until

from archety_relay.capture import detection
from archety_relay.chatdb import watcher
from archety_relay.config import Settings
from archety_relay.daemon import Daemon
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.store import Store


def test_macos_watches_with_kqueue() -> None:
    """FSEvents says nothing while Messages keeps the WAL open: darwin gets kqueue."""
    assert watcher.observer_kind("darwin") == "kqueue"
    assert watcher.observer_kind("linux") == "default"


def test_a_watcher_that_cannot_start_still_relays_and_retries_quietly(
    settings: Settings, store: Store, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The watcher fails (kqueue asked for on Linux): relay_ready all the same, messages go by
    the timer check, one warning however many capture loops pass, and once the watcher can
    start, a line saying so and file events again."""
    chat = writer.direct_chat(ALICE)
    daemon = Daemon(settings, store, platform="darwin")
    daemon.watcher_retry_seconds = 0.2
    with structlog.testing.capture_logs() as logged:
        daemon.start()
        try:
            assert wait_until(lambda: any(e["event"] == "relay_ready" for e in logged))
            writer.message("by the timer", sender=ALICE, chat=chat)
            assert backend.wait_for_messages(1, timeout=10)
            assert wait_until(lambda: daemon._watcher_failures >= 3, timeout=10)
            daemon.platform = None  # the watcher can start now
            assert wait_until(lambda: any(e["event"] == "watcher_recovered" for e in logged))
            writer.message("by a file event", sender=ALICE, chat=chat)
            assert backend.wait_for_messages(2, timeout=10)
        finally:
            daemon.shutdown()
    events = [e["event"] for e in logged]
    assert events.count("watcher_unavailable") == 1
    assert accepted_texts(backend) == ["by the timer", "by a file event"]
    noticed = detection.read(settings.state_dir)
    assert noticed is not None and noticed["noticed_by"].get("timer", 0) >= 1


def test_status_shows_how_fast_messages_were_noticed(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Each captured message's delay from its date and what noticed it; `status` prints p50 and
    p99 (on a Mac: whether file events work, at a glance)."""
    chat = writer.direct_chat(ALICE)
    relay = start_relay()
    for i in range(4):
        writer.message(f"m{i}", sender=ALICE, chat=chat)
        backend.wait_for_messages(i + 1)
    relay.terminate()
    result = run_cli(["status", "--json"], env, cwd=tmp_path)
    noticed = json.loads(result.stdout)["detection"]
    assert noticed["messages"] == 4 and noticed["noticed_by"] == {"file_event": 4}
    assert noticed["p50_ms"] <= noticed["p99_ms"]
    text = run_cli(["status"], env, cwd=tmp_path).stdout
    assert "detection     : default; last 4 messages p50" in text


def test_percentiles_are_figures_that_happened() -> None:
    """Nearest rank: p50 and p99 are delays some message really had."""
    assert detection.percentile([], 0.5) is None
    assert detection.percentile([5.0, 1.0, 3.0], 0.5) == 3.0
    assert detection.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert detection.percentile([7.0], 0.99) == 7.0


def test_a_watcher_is_replaced_when_it_stops_seeing_everything() -> None:
    """kqueue watches each file by descriptor: a WAL re-created (a new inode) is unwatched, and
    a dead emitter thread sees nothing; both mean a new observer. inotify watches the
    directory, so there a new WAL is fine. A WAL that is merely gone is not a reason."""
    assert watcher.restart_reason("kqueue", True, 11, 12) == "wal_recreated"
    assert watcher.restart_reason("kqueue", True, 11, None) is None
    assert watcher.restart_reason("kqueue", True, None, 12) is None
    assert watcher.restart_reason("default", True, 11, 12) is None
    assert watcher.restart_reason("default", False, 11, 11) == "emitter_died"


def test_a_watcher_whose_emitter_died_is_restarted(
    settings: Settings, store: Store, writer: MessagesWriter, backend: StubBackend
) -> None:
    """watchdog never restarts an emitter thread that ended: the daemon notices on its next
    pass, logs watcher_restarted with the reason, starts a new observer, and the next message
    is noticed by a file event again."""
    chat = writer.direct_chat(ALICE)
    daemon = Daemon(settings, store)
    with structlog.testing.capture_logs() as logged:
        daemon.start()
        try:
            assert wait_until(lambda: any(e["event"] == "relay_ready" for e in logged))
            first = daemon._observer
            for emitter in list(first.emitters):
                emitter.stop()
                emitter.join(5)
            assert wait_until(lambda: daemon._observer not in (None, first), timeout=10)
            writer.message("after the restart", sender=ALICE, chat=chat)
            assert backend.wait_for_messages(1, timeout=10)
        finally:
            daemon.shutdown()
    (restarted,) = [e for e in logged if e["event"] == "watcher_restarted"]
    assert restarted["reason"] == "emitter_died"
    assert accepted_texts(backend) == ["after the restart"]
