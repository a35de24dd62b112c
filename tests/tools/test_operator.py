"""The operator's commands through the real CLI: doctor, set-secret, service, logs, tests."""

from __future__ import annotations

import json
import os
import plistlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ALICE, cli_env, run_cli, wait_until

from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend

TESTS = str(Path(__file__).parents[1])


def keyring_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {
        **env,
        "PYTHON_KEYRING_BACKEND": "keyring_backends.FileKeyring",
        "TEST_KEYRING_FILE": str(tmp_path / "keyring.json"),
        "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
    }


def test_doctor_all_green_against_a_healthy_backend(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend, secret: str
) -> None:
    """Every check passes: exit 0; the secret shows at most its last four characters."""
    result = run_cli(["doctor"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "✓ secret" in result.stdout and f"…{secret[-4:]}" in result.stdout
    assert secret not in result.stdout
    assert re.search(r"✓ backend accepts secret\s+heartbeat HTTP 200", result.stdout)
    assert "all checks passed" in result.stdout


def test_doctor_explains_a_rejected_secret(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A 401 to the heartbeat: ✗ with the status, RELAY_WEBHOOK_SECRET and the fix; exit 3."""
    result = run_cli(["doctor"], {**env, "RELAY_WEBHOOK_SECRET": "rotated-away-1234"}, cwd=tmp_path)
    assert result.returncode == 3
    assert "✗ backend accepts secret" in result.stdout and "HTTP 401" in result.stdout
    assert "fix: set the current secret: archety-relay set-secret" in result.stdout


def test_doctor_with_no_backend_and_an_unreadable_chatdb(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Nothing listening: exit 4. chat.db that cannot be opened (what a missing Full Disk Access
    grant looks like: TCC hides it): the interpreter to grant FDA. A chat.db that opens but is
    damaged is not blamed on FDA (test_faults_chatdb)."""
    bad = tmp_path / "hidden" / "chat.db"
    result = run_cli(
        ["doctor"],
        {**env, "ARCHETY_BACKEND_URL": "http://127.0.0.1:9", "ARCHETY_CHAT_DB": str(bad)},
        cwd=tmp_path,
    )
    assert result.returncode == 4
    assert "✗ backend accepts secret  no answer" in result.stdout
    assert "✗ chat.db readable" in result.stdout
    assert os.path.realpath(sys.executable) in result.stdout
    assert "Privacy & Security > Full Disk Access" in result.stdout


def test_set_secret_stores_in_the_keychain_after_verifying(
    env: dict[str, str], tmp_path: Path, backend: StubBackend, secret: str
) -> None:
    """Read from stdin (never argv), verified by a heartbeat, stored under the daemon's names."""
    kenv = keyring_env({k: v for k, v in env.items() if k != "RELAY_WEBHOOK_SECRET"}, tmp_path)
    result = run_cli(["set-secret"], kenv, cwd=tmp_path, input=secret + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stored in the Keychain" in result.stdout and "backend accepts it" in result.stdout
    assert secret not in result.stdout + result.stderr
    stored = json.loads((tmp_path / "keyring.json").read_text())
    assert stored == {"relay-webhook-secret/archety-relay": secret}
    once = run_cli(["--once"], kenv, cwd=tmp_path)  # the daemon's lookup finds it
    assert once.returncode == 0, once.stdout


def test_set_secret_refuses_a_secret_the_backend_rejects(
    env: dict[str, str], tmp_path: Path, backend: StubBackend
) -> None:
    """A wrong secret is not stored: exit 3."""
    kenv = keyring_env(env, tmp_path)
    result = run_cli(["set-secret"], kenv, cwd=tmp_path, input="wrong-secret-value\n")
    assert result.returncode == 3 and "nothing stored" in result.stdout
    assert not (tmp_path / "keyring.json").exists()


def test_set_secret_without_a_keyring_writes_a_private_env_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    """No keyring backend (Linux): says so and writes <state dir>/.env with mode 0600."""
    result = run_cli(["set-secret", "--no-verify"], env, cwd=tmp_path, input="s3cret-value\n")
    assert result.returncode == 0
    assert "Keychain unavailable" in result.stdout
    env_file = Path(env["ARCHETY_STATE_DIR"]) / ".env"
    assert env_file.read_text() == "RELAY_WEBHOOK_SECRET=s3cret-value\n"
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_set_secret_generate_prints_a_fresh_random_secret(
    env: dict[str, str], tmp_path: Path
) -> None:
    """--generate prints 64 hex digits (like `openssl rand -hex 32`), different each time."""
    a = run_cli(["set-secret", "--generate"], env, cwd=tmp_path).stdout.strip()
    b = run_cli(["set-secret", "--generate"], env, cwd=tmp_path).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", a) and a != b


def test_install_service_dry_run_renders_this_installation(
    env: dict[str, str], tmp_path: Path
) -> None:
    """--dry-run on Linux: a valid plist with absolute paths, no secret, and the launchctl lines."""
    result = run_cli(
        ["install-service", "--dry-run"], {**env, "EDGE_AGENT_ID": "mini-2"}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    xml = "\n".join(ln for ln in result.stdout.splitlines() if not ln.startswith(("#", "$")))
    plist = plistlib.loads(xml.encode())
    # The relay's app starts the venv's Python (issue #22; see tests/macos/test_app_identity.py).
    assert plist["ProgramArguments"][0].endswith("/Archety Relay.app/Contents/MacOS/archety-relay")
    assert plist["ProgramArguments"][1] == str(Path(sys.executable).absolute())
    assert plist["ProgramArguments"][2:] == ["-m", "archety_relay", "run"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert plist["EnvironmentVariables"]["EDGE_AGENT_ID"] == "mini-2"
    assert not any("SECRET" in k for k in plist["EnvironmentVariables"])
    assert env["RELAY_WEBHOOK_SECRET"] not in result.stdout
    for key in ("StandardOutPath", "StandardErrorPath", "WorkingDirectory"):
        assert Path(plist[key]).is_absolute()
    uid = os.getuid()
    assert f"$ launchctl bootout gui/{uid}/com.archety.relay" in result.stdout
    assert re.search(
        rf"\$ launchctl bootstrap gui/{uid} /\S+com\.archety\.relay\.plist", result.stdout
    )
    assert f"$ launchctl enable gui/{uid}/com.archety.relay" in result.stdout
    assert "kickstart" not in result.stdout  # it would kill the instance bootstrap started


def test_service_commands_refuse_off_macos(env: dict[str, str], tmp_path: Path) -> None:
    """Without --dry-run, Linux gets a clear refusal (exit 2) and nothing is written."""
    for command in ("install-service", "uninstall-service"):
        result = run_cli([command], env, cwd=tmp_path)
        assert result.returncode == 2 and "--dry-run" in result.stderr
    assert not (Path(env["HOME"]) / "Library").exists()
    dry = run_cli(["uninstall-service", "--dry-run"], env, cwd=tmp_path)
    assert f"$ launchctl bootout gui/{os.getuid()}/com.archety.relay" in dry.stdout


def test_logs_readable_filtered_and_followed(env: dict[str, str], tmp_path: Path) -> None:
    """`logs` prints events readably; --errors keeps warnings/errors with advice; --since cuts;
    -f prints lines appended later."""
    log = Path(env["ARCHETY_LOG_FILE"])
    log.parent.mkdir(parents=True)
    old = "2020-01-01T00:00:00Z"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    log.write_text(
        "\n".join(
            json.dumps(e)
            for e in [
                {"event": "relay_ready", "level": "info", "timestamp": old},
                {
                    "event": "auth_rejected",
                    "level": "error",
                    "status": 401,
                    "timestamp": now,
                    "hint": "the backend rejected RELAY_WEBHOOK_SECRET (401).",
                },
                {
                    "event": "message_delivery_attempt",
                    "level": "info",
                    "status": 200,
                    "timestamp": now,
                },
            ]
        )
        + "\n"
    )
    everything = run_cli(["logs"], env, cwd=tmp_path).stdout
    assert "relay_ready" in everything and "message_delivery_attempt" in everything
    assert "ERROR   auth_rejected" in everything and "status=401" in everything
    errors = run_cli(["logs", "--errors"], env, cwd=tmp_path).stdout
    assert errors.count("\n") == 2 and "→ the backend rejected RELAY_WEBHOOK_SECRET" in errors
    recent = run_cli(["logs", "--since", "1h"], env, cwd=tmp_path).stdout
    assert "relay_ready" not in recent and "auth_rejected" in recent

    follower = subprocess.Popen(
        [sys.executable, "-m", "archety_relay", "logs", "-f"],
        env=cli_env(env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        with open(log, "a") as f:
            f.write(
                json.dumps({"event": "later_event", "level": "warning", "timestamp": now}) + "\n"
            )
        lines: list[str] = []
        stdout = follower.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
        reader.start()
        assert wait_until(lambda: "later_event" in "".join(lines), timeout=10)
    finally:
        follower.kill()
        follower.communicate()


def test_test_message_posts_one_synthetic_message(
    env: dict[str, str], tmp_path: Path, backend: StubBackend
) -> None:
    """✅ when accepted, with the body shaped like a real message; ❌ and exit 3 when rejected."""
    ok = run_cli(["test-message", "ping from the mini"], env, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("✅")
    (got,) = backend.messages()
    assert got.body["text"] == "ping from the mini"
    assert got.headers["Idempotency-Key"] == got.body["message_guid"]
    backend.set_default("/orchestrator/heartbeat", Behaviour(403))
    rejected = run_cli(["test-message", "again"], env, cwd=tmp_path)
    assert rejected.returncode == 3 and rejected.stdout.startswith("❌")


def test_backfill_replays_recent_history_once(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """History the first start skipped: backfill shows the count, sends it, never twice."""
    chat = writer.direct_chat(ALICE)
    writer.message("three hours ago", sender=ALICE, chat=chat, sent_at=time.time() - 3 * 3600)
    writer.message("an hour ago", sender=ALICE, chat=chat, sent_at=time.time() - 3600)
    writer.message("a minute ago", sender=ALICE, chat=chat, sent_at=time.time() - 60)
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    assert backend.messages() == []
    unconfirmed = run_cli(["backfill", "--since", "2h"], env, cwd=tmp_path)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    result = run_cli(["backfill", "--since", "2h", "--yes"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 message(s) from the last 2h would be sent" in result.stdout
    assert [r.body["text"] for r in backend.messages()] == ["an hour ago", "a minute ago"]
    again = run_cli(["backfill", "--since", "2h", "--yes"], env, cwd=tmp_path)
    assert "0 message(s)" in again.stdout and "2 already sent" in again.stdout
    assert len(backend.messages()) == 2


def test_backfill_holds_back_what_the_filter_rules_hold_back_and_keeps_the_chat_context(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Review 2026-12-04 #13: the live relay held "WIN A PRIZE …" back by a filter rule;
    `backfill` must not replay it, nor a history message the same rule holds back (that one is
    reported `message_filtered`, as live), and what it does send carries the chat's context
    like a live message."""
    chat = writer.direct_chat(ALICE)
    writer.message("are we still on?", sender=ALICE, chat=chat, sent_at=time.time() - 1800)
    old_spam = writer.message(
        "WIN A PRIZE today only", sender=ALICE, chat=chat, sent_at=time.time() - 1700
    )
    filter_rule = {
        "rule_type": "filter",
        "rule_config": {
            "name": "no-spam",
            "conditions": [{"field": "content", "operator": "contains", "value": "WIN A PRIZE"}],
        },
    }
    context = {"chat_guid": f"iMessage;-;{ALICE}", "app_id": "trivia", "state": "active"}
    backend.script(
        "/edge/sync",
        Behaviour(
            body={
                "commands": [
                    {"command_id": "r-1", "command_type": "set_rule", "params": filter_rule},
                    {"command_id": "c-1", "command_type": "context_update", "params": context},
                ]
            }
        ),
    )
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0  # cursor placed, rule set
    writer.message("WIN A PRIZE click http://evil.example", sender=ALICE, chat=chat)
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    assert backend.messages() == []  # held back live
    result = run_cli(["backfill", "--since", "1h", "--yes"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 message(s) from the last 1h would be sent" in result.stdout
    [posted] = [r.body for r in backend.messages()]
    assert posted["text"] == "are we still on?"
    assert posted["context"]["active_miniapp"] == "trivia"
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    filtered = [e for e in backend.sync_events() if e["event_type"] == "message_filtered"]
    assert writer.guid_of(old_spam) in {e["message_guid"] for e in filtered}


def test_backfill_refuses_a_window_older_than_the_delivered_memory(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Review #25: delivered guids are remembered 7 days, so `--since 10d` could re-send a
    message delivered ten days ago. It is refused with the limit named, and nothing is sent."""
    chat = writer.direct_chat(ALICE)
    ten_days = time.time() - 10 * 86400
    writer.message("delivered ten days ago", sender=ALICE, chat=chat, sent_at=ten_days)
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    result = run_cli(["backfill", "--since", "10d", "--yes"], env, cwd=tmp_path)
    assert result.returncode == 2
    assert "7 days" in result.stderr and "--since 7d" in result.stderr
    assert backend.messages() == []


def test_status_shows_a_running_daemon(
    start_relay: object, env: dict[str, str], tmp_path: Path
) -> None:
    """While the daemon runs, status reports its pid and that it is running."""
    relay = start_relay()  # type: ignore[operator]
    status = json.loads(run_cli(["status", "--json"], env, cwd=tmp_path).stdout)
    assert status["daemon_running"] is True and status["daemon_pid"] == relay.proc.pid
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    assert f"running (pid {relay.proc.pid})" in human
    second = run_cli(["run"], env, cwd=tmp_path, timeout=20)
    assert second.returncode == 1 and "another archety-relay is running" in second.stderr


def test_doctor_names_a_keychain_that_never_answers(env: dict[str, str], tmp_path: Path) -> None:
    """A Keychain item Python may not read (a dialog on a headless Mac): doctor says so and how
    to store the secret so the agent can read it; the lookup gives up instead of hanging."""
    kenv = {
        **keyring_env({k: v for k, v in env.items() if k != "RELAY_WEBHOOK_SECRET"}, tmp_path),
        "PYTHON_KEYRING_BACKEND": "keyring_backends.HangingKeyring",
    }
    started = time.monotonic()
    result = run_cli(["doctor"], kenv, cwd=tmp_path)
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    assert "✗ secret" in result.stdout and "did not answer within 3s" in result.stdout
    assert "archety-relay set-secret" in result.stdout
