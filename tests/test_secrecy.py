"""What the relay keeps and shows: no message text or secret from a backend's echo, nothing that
steers the operator's terminal, logs nobody else can read, and a secret that cannot work is
refused up front with a message that never quotes it."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from conftest import ALICE, read_log, run_cli

from archety_relay import config, logs
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.errors import ConfigError
from archety_relay.redact import scrub_body
from archety_relay.store import OUTBOX_FILE

MSG = "/orchestrator/message"
PRIVATE = "meet me behind the station at 9"
# What FastAPI answers when pydantic refuses a field: the refused value comes back as `input`.
PYDANTIC_422 = {
    "detail": [
        {
            "type": "string_too_long",
            "loc": ["body", "text"],
            "msg": "String should have at most 10 characters",
            "input": PRIVATE,
            "ctx": {"max_length": 10},
        },
        {
            "type": "missing",
            "loc": ["body", "chat_guid"],
            "msg": "Field required",
            "input": {"text": PRIVATE, "sender": ALICE},
        },
    ],
    "body": {"text": PRIVATE, "sender": ALICE},
}


# -- 20: backend bodies echoed into logs and status ---------------------------------------------
@pytest.mark.parametrize("cut", [None, 150, 260, 400])
def test_scrub_body_drops_what_a_422_echoes_even_when_cut_short(cut: int | None) -> None:
    """Whole or cut anywhere, the scrubbed 422 keeps what went wrong (type, loc, msg) and never
    the message text or the sender's number."""
    raw = json.dumps(PYDANTIC_422)
    scrubbed = scrub_body(raw[:cut] if cut else raw)
    assert PRIVATE not in scrubbed and "0101" not in scrubbed.replace("***0101", "")
    assert "meet me" not in scrubbed and ALICE not in scrubbed
    assert "string_too_long" in scrubbed


def test_scrub_body_masks_secret_like_values_and_keeps_guids() -> None:
    """Tokens, Bearer values, the configured secret, phone numbers and e-mail addresses are
    masked in any body, JSON or not; a message guid stays readable."""
    guid = "5F0E1234-ABCD-4ABC-8DEF-0123456789AB"
    body = (
        f"<html>rejected {guid}: token=sk_live_abcdefghijklmnop1234567890 "
        "Authorization: Bearer abc.def call +1 (555) 555-0101 or jo@example.com "
        "configured-secret-value</html>"
    )
    scrubbed = scrub_body(body, ("configured-secret-value",))
    for leaked in ("sk_live", "abc.def", "555-0101", "jo@", "configured-secret-value"):
        assert leaked not in scrubbed
    assert guid in scrubbed and "+1555***0101" in scrubbed
    as_json = scrub_body(json.dumps({"error": "bad", "token": "x", "password": "hunter2"}))
    assert json.loads(as_json) == {"error": "bad", "token": "[omitted]", "password": "[omitted]"}


def test_a_422_that_echoes_the_message_leaves_no_text_in_the_log_or_status(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Dead-lettered with a pydantic 422: the ERROR log line, `status` and `status --json` say
    HTTP 422 and why, but neither the text nor the number; the dead-letter row is stored
    scrubbed, and a row stored unscrubbed by an older version is scrubbed when shown."""
    chat = writer.direct_chat(ALICE)
    run_cli(["--once"], env, cwd=tmp_path)
    writer.message(PRIVATE, sender=ALICE, chat=chat)
    backend.script(MSG, Behaviour(422, body=PYDANTIC_422))
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    (dead,) = [e for e in read_log(Path(env["ARCHETY_LOG_FILE"])) if e["level"] == "error"]
    assert dead["event"] == "message_dead_lettered" and "string_too_long" in dead["response"]
    with sqlite3.connect(Path(env["ARCHETY_STATE_DIR"]) / OUTBOX_FILE) as db:
        ((stored,),) = db.execute("SELECT response FROM dead_letter").fetchall()
        assert "string_too_long" in stored and "behind the station" not in stored
        assert ALICE not in stored
        # What an older version stored: `status` scrubs it when it shows it.
        db.execute("UPDATE dead_letter SET response = ?", (json.dumps(PYDANTIC_422),))
    db.close()
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    as_json = run_cli(["status", "--json"], env, cwd=tmp_path).stdout
    (listed,) = json.loads(as_json)["dead_letters"]
    assert listed["status"] == 422 and "string_too_long" in listed["response"]
    for shown in (Path(env["ARCHETY_LOG_FILE"]).read_text(), human, as_json):
        assert "behind the station" not in shown and ALICE not in shown


# -- 21: control characters in status and logs --------------------------------------------------
def test_status_escapes_control_characters_in_a_dead_letter(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A plain-text answer carrying ESC sequences and newlines cannot clear the screen or forge
    `status` lines: every control shows as `\\xNN` on the dead letter's own line."""
    chat = writer.direct_chat(ALICE)
    run_cli(["--once"], env, cwd=tmp_path)
    writer.message("hello", sender=ALICE, chat=chat)
    forged = "\x1b[2J\x1b[H\nqueue         : 0 undelivered\nauth          : ok\x9b31m\x07"
    backend.script(MSG, Behaviour(400, body=forged.encode()))
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    assert not any(ch in human for ch in "\x1b\x9b\x07")
    assert [ln for ln in human.splitlines() if ln.startswith("auth")] == ["auth          : ok"]
    (dead_line,) = [ln for ln in human.splitlines() if ln.startswith("  - ")]
    assert "\\x1b[2J\\x1b[H\\x0aqueue" in dead_line


def test_logs_escape_control_characters_in_fields_and_foreign_lines(
    env: dict[str, str], tmp_path: Path
) -> None:
    """`logs` prints one line per event whatever a field holds (newline, ESC, C1, bidi override),
    and a line that is not JSON is escaped too."""
    log = Path(env["ARCHETY_LOG_FILE"])
    log.parent.mkdir(parents=True)
    event = {
        "event": "message_delivery_attempt",
        "level": "warning",
        "timestamp": "2026-11-28T05:00:00Z",
        "chat_guid": "x\n2026-11-28\x1b[8m",
        "error": "\x9b2J\u202eevil",
        "hint": "fix\x1b]0;title\x07",
    }
    log.write_text(json.dumps(event) + "\n" + "Traceback \x1b[31mred\x1b[0m\n")
    out = run_cli(["logs"], env, cwd=tmp_path).stdout
    assert not any(ch in out for ch in "\x1b\x9b\x07\u202e")
    lines = out.splitlines()
    assert len(lines) == 3 and lines[1].startswith("    → fix\\x1b]0;title")
    assert "chat_guid=x\\x0a2026-11-28\\x1b[8m error=\\x9b2J\\u202eevil" in lines[0]
    assert lines[2] == "Traceback \\x1b[31mred\\x1b[0m"


# -- 22: log file modes -------------------------------------------------------------------------
@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    structlog.reset_defaults()


def test_rotated_logs_stay_private_and_the_log_directory_is_0700(
    tmp_path: Path, umask_022: None
) -> None:
    """Under a umask of 022 the log directory is created 0700, and after a rollover the new
    log file and the rotated one are both 0600; a backup an older version left 0644 is fixed."""
    log_file = tmp_path / "Logs" / "archety-relay" / "relay.log"
    log_file.parent.parent.mkdir()
    (log_file.parent.parent / "unrelated").mkdir()
    assert logs.configure(log_file=log_file, console=None) == []
    structlog.get_logger("test").info("before_rollover")
    (handler,) = [h for h in logging.getLogger().handlers if hasattr(h, "doRollover")]
    handler.doRollover()  # type: ignore[attr-defined]
    structlog.get_logger("test").info("after_rollover")
    Path(f"{log_file}.2").write_text("{}\n")
    os.chmod(f"{log_file}.2", 0o644)
    logs.configure(log_file=log_file, console=None)

    def mode(path: Path | str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    assert mode(log_file.parent) == 0o700
    assert mode(log_file.parent.parent) == 0o755  # not ours to change
    assert [mode(p) for p in (log_file, f"{log_file}.1", f"{log_file}.2")] == [0o600] * 3
    assert "after_rollover" in log_file.read_text()
    assert "before_rollover" in Path(f"{log_file}.1").read_text()


# -- 28: a secret that cannot be sent ------------------------------------------------------------
BAD_SECRET = "abc\u2019def0123456789"  # a pasted curly quote


def test_config_refuses_a_secret_outside_printable_ascii(tmp_path: Path) -> None:
    """A curly quote or a control character in the secret: ConfigError naming the variable,
    where it came from and the position, never the secret; read-only commands still load."""
    for bad in (BAD_SECRET, "abc\x7f0123456789", "abc\x000123456789"):
        env = {config.SECRET_VARIABLE: bad, "ARCHETY_STATE_DIR": str(tmp_path)}
        with pytest.raises(ConfigError) as refused:
            config.load(env, tmp_path)
        message = refused.value.message
        assert "RELAY_WEBHOOK_SECRET (from environment)" in message and "character 4" in message
        assert bad not in message and "def012" not in message
        relaxed = config.load(env, tmp_path, require_secret=False)
        assert relaxed.secret.reveal() == "" and relaxed.notes[-1].startswith("secret_unusable:")


def test_set_secret_refuses_a_non_ascii_secret_and_stores_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    """set-secret with a pasted curly quote: exit 2, the reason, no traceback, the secret not
    echoed, nothing written to the Keychain or a .env file."""
    keyring_file = tmp_path / "keyring.json"
    run_env = {
        **env,
        "PYTHON_KEYRING_BACKEND": "keyring_backends.FileKeyring",
        "TEST_KEYRING_FILE": str(keyring_file),
        "PYTHONPATH": str(Path(__file__).parent),
    }
    del run_env["RELAY_WEBHOOK_SECRET"]
    result = run_cli(["set-secret", "--no-verify"], run_env, cwd=tmp_path, input=BAD_SECRET + "\n")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not ASCII" in result.stderr and "Traceback" not in result.stderr
    assert BAD_SECRET not in result.stdout + result.stderr
    assert not keyring_file.exists() and not (Path(env["ARCHETY_STATE_DIR"]) / ".env").exists()


def test_doctor_names_an_unusable_secret_without_crashing(
    env: dict[str, str], tmp_path: Path
) -> None:
    """doctor with a non-ASCII secret: the problem is listed (exit 2), the other checks still
    run, no traceback and no secret in the output; the daemon refuses to start the same way."""
    bad_env = {**env, "RELAY_WEBHOOK_SECRET": BAD_SECRET}
    result = run_cli(["doctor"], bad_env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "not ASCII" in result.stdout and "chat.db" in result.stdout
    assert BAD_SECRET not in result.stdout + result.stderr
    once = run_cli(["--once"], bad_env, cwd=tmp_path)
    assert once.returncode == 2 and "RELAY_WEBHOOK_SECRET (from environment)" in once.stderr
    assert "Traceback" not in once.stderr and BAD_SECRET not in once.stderr


def test_test_message_escapes_what_the_backend_answers(
    env: dict[str, str], tmp_path: Path, backend: StubBackend
) -> None:
    """`test-message` shows the backend's answer: ESC sequences in it are printed as escapes,
    so the answer cannot clear the screen or forge the ✅ line."""
    backend.script(MSG, Behaviour(200, body=b"\x1b[2J\x1b[H\xe2\x9c\x85 all fine\xc2\x9b31m"))
    result = run_cli(["test-message", "ping"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(ch in result.stdout for ch in "\x1b\x9b")
    assert "backend answered: \\x1b[2J\\x1b[H✅ all fine\\x9b31m" in result.stdout


def test_status_shows_the_newest_dead_letters_not_thousands(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """5,000 dead letters (a long 422 storm): `status` counts them all and lists the newest 20
    with a note, so the lines after them (last delivery, auth) stay on the screen; `--json`
    still lists every one."""
    chat = writer.direct_chat(ALICE)
    run_cli(["--once"], env, cwd=tmp_path)
    writer.message("hello", sender=ALICE, chat=chat)
    backend.script(MSG, Behaviour(400, body={"error": "bad"}))
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    with sqlite3.connect(Path(env["ARCHETY_STATE_DIR"]) / OUTBOX_FILE) as db:
        db.executemany(
            "INSERT INTO dead_letter (message_guid, source_rowid, body, enqueued_at, attempts,"
            " status, response, dead_at) VALUES (?, 1, x'7b7d', 0, 1, 422, 'no', ?)",
            [(f"guid-{i:05d}", 1.0 + i) for i in range(4999)],
        )
    db.close()
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    listed = [ln for ln in human.splitlines() if ln.startswith("  - ")]
    assert "dead letters  : 5000" in human and len(listed) == 20
    assert "4980 older not shown" in human and "guid-04998" in listed[-1]
    assert (
        len(json.loads(run_cli(["status", "--json"], env, cwd=tmp_path).stdout)["dead_letters"])
        == 5000
    )
