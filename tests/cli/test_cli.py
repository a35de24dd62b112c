"""The real CLI in a subprocess: the daemon, --once, exit codes, signals, secrecy of logs."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from conftest import (
    ALICE,
    SYNC_REQUEST_FIELDS,
    RelayProcess,
    log_events,
    read_log,
    run_cli,
    wait_until,
    write_env_file,
)

from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend

MSG = "/orchestrator/message"


def test_daemon_relays_a_new_message_and_stops_cleanly_on_sigterm(
    start_relay: Callable[..., RelayProcess], writer: MessagesWriter, backend: StubBackend
) -> None:
    """relay_ready is logged, a committed row reaches the backend, SIGTERM exits 0 within 5 s."""
    chat = writer.direct_chat(ALICE)
    relay = start_relay()
    writer.message("are you there?", sender=ALICE, chat=chat)
    (got,) = backend.wait_for_messages(1, timeout=10)
    assert got.body["text"] == "are you there?"
    assert wait_until(lambda: len(backend.requests_to("/orchestrator/heartbeat")) >= 1)
    assert wait_until(lambda: len(backend.requests_to("/edge/sync")) >= 1)
    sync = backend.requests_to("/edge/sync")[0].body
    assert set(sync) == SYNC_REQUEST_FIELDS
    assert sync["status"] == "active"
    assert {"queue_depth", "dead_letters", "last_delivery_at", "uptime_s"} <= set(sync["stats"])
    rc, took = relay.terminate()
    assert rc == 0 and took < 5
    assert log_events(relay.log, "relay_stopped")


def test_sigterm_during_a_request_that_never_returns_still_exits_in_time(
    start_relay: Callable[..., RelayProcess], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A backend that accepts and never answers cannot hold the daemon past 5 s."""
    chat = writer.direct_chat(ALICE)
    backend.set_default(MSG, Behaviour(hang=True))
    relay = start_relay()
    writer.message("into the void", sender=ALICE, chat=chat)
    assert wait_until(lambda: len(backend.requests_to(MSG)) == 1)
    rc, took = relay.terminate()
    assert rc == 0 and took < 5


def test_kill_9_and_restart_loses_nothing_and_replays_nothing(
    start_relay: Callable[..., RelayProcess], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Messages written while the relay is dead go out after restart; delivered ones do not."""
    chat = writer.direct_chat(ALICE)
    first = start_relay()
    writer.message("before", sender=ALICE, chat=chat)
    assert wait_until(lambda: log_events(first.log, "message_delivery_attempt"))
    first.kill9()
    writer.message("while dead 1", sender=ALICE, chat=chat)
    writer.message("while dead 2", sender=ALICE, chat=chat)
    start_relay()
    got = backend.wait_for_messages(3)
    time.sleep(0.5)
    assert [r.body["text"] for r in backend.messages()] == [
        "before",
        "while dead 1",
        "while dead 2",
    ]
    assert len(got) == 3


def test_sighup_rereads_a_fixed_secret_without_restart(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
    secret: str,
) -> None:
    """After a 401, fixing .env and sending SIGHUP resumes delivery at once, queue intact."""
    env_file = write_env_file(tmp_path / "relay.env", "not-the-right-one")
    chat = writer.direct_chat(ALICE)
    relay = start_relay(
        {
            "RELAY_WEBHOOK_SECRET": "",
            "ARCHETY_ENV_FILE": str(env_file),
            "ARCHETY_AUTH_PROBE_INTERVAL": "3600",
        }
    )
    writer.message("held while rejected", sender=ALICE, chat=chat)
    assert wait_until(lambda: log_events(relay.log, "auth_rejected"))
    (rejected,) = log_events(relay.log, "auth_rejected")
    assert rejected["level"] == "error" and "RELAY_WEBHOOK_SECRET" in rejected["hint"]
    write_env_file(env_file, secret)
    relay.proc.send_signal(signal.SIGHUP)
    (got,) = backend.wait_for_messages(1, timeout=10)
    assert got.body["text"] == "held while rejected"
    assert wait_until(lambda: log_events(relay.log, "auth_recovered"))


def test_once_relays_and_prints_a_summary(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """--once: health check, new rows, delivery, one sync, a summary, exit 0."""
    chat = writer.direct_chat(ALICE)
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0  # places the cursor
    writer.message("manual test", sender=ALICE, chat=chat)
    writer.message("mine", sender=ALICE, chat=chat, is_from_me=1)
    result = run_cli(["--once"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "delivered    : 1" in result.stdout
    assert "from_me 1" in result.stdout
    assert [r.body["text"] for r in backend.messages()] == ["manual test"]
    assert len(backend.requests_to("/edge/sync")) == 2


def test_once_exit_codes_name_the_problem(
    env: dict[str, str], tmp_path: Path, backend: StubBackend
) -> None:
    """2 config, 3 rejected secret, 4 backend unreachable, 5 chat.db unreadable."""
    no_secret = run_cli(["--once"], {**env, "RELAY_WEBHOOK_SECRET": ""}, cwd=tmp_path)
    assert no_secret.returncode == 2
    for way in ("set-secret", "security add-generic-password", ".env", "export"):
        assert way in no_secret.stderr

    insecure = run_cli(
        ["--once"], {**env, "ARCHETY_BACKEND_URL": "http://example.com"}, cwd=tmp_path
    )
    assert insecure.returncode == 2 and "clear text" in insecure.stderr

    bad_number = run_cli(["--once"], {**env, "ARCHETY_HEARTBEAT_INTERVAL": "soon"}, cwd=tmp_path)
    assert bad_number.returncode == 2 and "ARCHETY_HEARTBEAT_INTERVAL" in bad_number.stderr

    rejected = run_cli(["--once"], {**env, "RELAY_WEBHOOK_SECRET": "wrong"}, cwd=tmp_path)
    assert rejected.returncode == 3 and "401" in rejected.stdout

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = run_cli(
        ["--once"], {**env, "ARCHETY_BACKEND_URL": f"http://127.0.0.1:{port}"}, cwd=tmp_path
    )
    assert down.returncode == 4

    missing = run_cli(
        ["--once"], {**env, "ARCHETY_CHAT_DB": str(tmp_path / "nope" / "chat.db")}, cwd=tmp_path
    )
    assert missing.returncode == 5 and "Full Disk Access" in missing.stderr


def test_secret_and_message_text_never_reach_logs_or_output(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
    secret: str,
) -> None:
    """Across delivery, rejection and --once: no secret anywhere, no text at INFO, masked numbers.

    The daemon runs with --verbose so its stderr carries DEBUG events too: those may hold the
    text (for local debugging) but still never a secret or an unmasked phone number.
    """
    chat = writer.direct_chat(ALICE)
    backend.script(MSG, Behaviour(401))
    relay = start_relay(
        {"ARCHETY_AUTH_PROBE_INTERVAL": "0.2"}, args=("--verbose", "--log-format", "json")
    )
    writer.message("private words here", sender=ALICE, chat=chat)
    backend.wait_for_messages(1)
    assert wait_until(lambda: log_events(relay.log, "auth_recovered"))
    relay.terminate()
    out, err = relay.stop()
    once = run_cli(["--once", "--log-format", "json"], env, cwd=tmp_path)
    log_text = relay.log.read_text()
    for blob in (log_text, out, err, once.stdout, once.stderr):
        assert secret not in blob
        assert ALICE not in blob
    for blob in (log_text, once.stdout, once.stderr):
        assert "private words here" not in blob
    captured = [json.loads(line) for line in err.splitlines() if '"message_captured"' in line]
    assert [(c["level"], c["sender"]) for c in captured] == [("debug", "+1555***0101")]
    events = {e["event"] for e in read_log(relay.log)}
    assert {"message_delivery_attempt", "auth_rejected", "auth_recovered"} <= events


def test_status_lists_queue_and_dead_letters_and_retry_dead_requeues(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """`status --json` shows the cursor and a dead letter; `retry-dead` puts it back in line."""
    chat = writer.direct_chat(ALICE)
    run_cli(["--once"], env, cwd=tmp_path)
    writer.message("poison", sender=ALICE, chat=chat)
    backend.script(MSG, Behaviour(400, body={"error": "bad"}))
    run_cli(["--once"], env, cwd=tmp_path)
    status = json.loads(run_cli(["status", "--json"], env, cwd=tmp_path).stdout)
    assert status["daemon_running"] is False
    assert status["cursor_rowid"] == status["chatdb_max_rowid"] == 1
    assert [d["status"] for d in status["dead_letters"]] == [400]
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    assert "dead letters  : 1" in human
    assert "re-queued 1" in run_cli(["retry-dead"], env, cwd=tmp_path).stdout
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    assert [r.body["text"] for r in backend.messages()] == ["poison"]


def test_status_before_the_first_run_says_so_and_exits_0(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter
) -> None:
    """No state database yet (a fresh install): `status` reports an empty queue, no crash."""
    result = run_cli(["status"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "queue         : 0 undelivered" in result.stdout
    assert "rules         : none" in result.stdout


def test_version_and_module_entry_point(env: dict[str, str], tmp_path: Path) -> None:
    """`python -m archety_relay --version` works without any configuration."""
    result = run_cli(["--version"], {}, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("archety-relay ")


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The README's first command: sample chat.db, stand-in backend, messages arrive; a voice
    note reaches the backend as Apple's transcript, a contact card as the person, and Alice's
    name comes from the demo's Contacts. The persona answers Alice's photo with a picture the
    stand-in backend serves: handed to Messages.app, confirmed in chat.db, and reported to the
    backend in message_sent with the served bytes' size and sha256."""
    result = run_cli(["demo"], {}, cwd=tmp_path, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✅ 8 of 8 messages relayed" in result.stdout
    assert '[voice]: "running ten minutes late, order me the risotto"' in result.stdout
    assert "voice note, 3.4 s, Apple's transcript" in result.stdout
    assert '"name": "Dana Scully", "phones": ["+15555550142"]' in result.stdout
    assert "(Alice Liddell, from Contacts)" in result.stdout
    assert "4 reply bubbles handed to Messages.app" in result.stdout
    assert re.search(r"Messages\.app → iMessage;-;\+15555550101: picture menu\.png", result.stdout)
    assert re.search(
        r"persona sent 1 picture, confirmed: .*message_sent reported menu\.png, \d+ bytes, "
        r"sha256 [0-9a-f]{12}… \(as served\)",
        result.stdout,
    )
    assert "1 photo uploaded before its message" in result.stdout
    assert "image/jpeg 1024x768 JPEG, no EXIF/GPS/XMP" in result.stdout
    # Where its metrics are, and what a scrape of them said.
    assert re.search(r"metrics on http://127\.0\.0\.1:\d+/metrics", result.stdout)
    assert "archety_relay_messages_delivered_total 8.0; /healthz: ok" in result.stdout


def test_file_events_wake_the_reader_without_waiting_for_the_poll(
    start_relay: Callable[..., RelayProcess], writer: MessagesWriter, backend: StubBackend
) -> None:
    """With the safety poll set to a minute, a new row still arrives: the real watchdog
    observer on chat.db's directory woke the reader."""
    chat = writer.direct_chat(ALICE)
    start_relay({"ARCHETY_POLL_INTERVAL": "60"})
    time.sleep(1.0)  # past the first capture and its short settle window
    writer.message("woken by the WAL write", sender=ALICE, chat=chat)
    assert wait_until(lambda: len(backend.messages()) == 1, timeout=20)
