"""The persona sends pictures and files (issue #19): fetched safely, staged where Messages may
read them, passed to the send script as an argument, and confirmed in chat.db.

Real parts: the stand-in backend serves the files behind its secret, the fake osascript (see
conftest) writes what Messages would into the test's chat.db (a from-me row with U+FFFC and the
attachment, copied into Messages' own Attachments folder), commands are parsed from the JSON a
sync answer carries.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ALICE,
    FakeOsascript,
    cli_env,
    killable_relay,
    log_events,
    osascript_arguments,
    wait_until,
)

from archety_relay.backend import commands
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.relay import Relay

PNG = b"\x89PNG\r\n\x1a\n" + hashlib.sha256(b"menu").digest() * 300
CHAT = f"iMessage;-;{ALICE}"
MSG = "/orchestrator/message"


def _events(relay: Relay, kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in relay.store.pending_events() if e.event_type == kind]


def _command(kind: str, params: dict[str, Any], *, under: str = "params") -> commands.Action:
    return commands.to_action({"command_id": f"c-{kind}", "command_type": kind, under: params})


def _run(relay: Relay, steps: int = 6, start: float = 100.0) -> None:
    # Each step waits for the fetch it starts, as `--once` does: these tests are about what is
    # fetched and staged (test_file_fetching proves that a fetch holds only its own chat).
    relay.outbound.fetch_wait = 30.0
    for step in range(steps):
        relay.outbound.dispatch_step(start + step)


def _staging(writer: MessagesWriter) -> Path:
    return writer.path.parent / "Attachments" / "archety"


def _file_sends(osascript: FakeOsascript) -> list[list[str]]:
    return [a for a in map(osascript_arguments, osascript.calls()) if len(a) > 5]


def _messages_copies(writer: MessagesWriter) -> list[tuple[str, str]]:
    """(filename, transfer_name) of every attachment on a from-me row Messages wrote."""
    conn = sqlite3.connect(writer.path)
    try:
        return conn.execute(
            "SELECT a.filename, a.transfer_name FROM message AS m "
            "JOIN message_attachment_join AS k ON k.message_id = m.ROWID "
            "JOIN attachment AS a ON a.ROWID = k.attachment_id WHERE m.is_from_me = 1"
        ).fetchall()
    finally:
        conn.close()


def test_a_picture_reaches_the_send_script_intact_after_its_text(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, osascript: FakeOsascript
) -> None:
    """send_message with text and a picture: the text goes first, then the picture's staged
    path as the script's sixth argument; Messages' copy holds the same bytes; message_sent
    reports filename, bytes and sha256; the staged copy is gone once Messages has its own."""
    writer.direct_chat(ALICE)
    url = backend.serve_file("menu.png", PNG, "image/png")
    relay.outbound.execute(
        _command(
            "send_message", {"chat_guid": CHAT, "text": "here", "attachments": [{"url": url}]}
        ),
        100.0,
    )
    _run(relay)
    calls = [osascript_arguments(c) for c in osascript.calls()]
    assert [c[1] for c in calls] == ["here", ""]
    staged = Path(calls[1][5])
    assert staged.parent.parent == _staging(writer).resolve() and staged.name == "menu.png"
    ((copy, name),) = _messages_copies(writer)
    assert Path(copy).read_bytes() == PNG and name == "menu.png"
    sent = _events(relay, "message_sent")
    assert len(sent) == 2
    assert sent[1]["details"]["attachments"] == [
        {"filename": "menu.png", "bytes": len(PNG), "sha256": hashlib.sha256(PNG).hexdigest()}
    ]
    assert not staged.exists() and list(_staging(writer).iterdir()) == []


def test_a_file_messages_keeps_where_it_was_staged_is_not_removed(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If chat.db names the staged path itself as the attachment's file, that file is
    Messages' now: it stays (other dialect: payload, send_message_now, no text)."""
    writer.direct_chat(ALICE)
    monkeypatch.setenv("FAKE_OSASCRIPT_FILE_MODE", "reference")
    url = backend.serve_file("a.png", PNG, "image/png")
    relay.outbound.execute(
        _command(
            "send_message_now",
            {"thread_id": CHAT, "attachments": [{"url": url, "filename": "photo.png"}]},
            under="payload",
        ),
        100.0,
    )
    _run(relay)
    ((staged_path, _name),) = _messages_copies(writer)
    assert Path(staged_path).read_bytes() == PNG
    assert [e["command_id"] for e in _events(relay, "message_sent")] == ["c-send_message_now"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme_not_allowed"),
        ("http://example.com/menu.png", "scheme_not_allowed"),
        ("{backend}/files/missing.png", "not_found"),
    ],
)
def test_a_refused_file_fails_alone_and_the_text_still_goes(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    url: str,
    reason: str,
) -> None:
    """file:, data:, plain http to a remote host, a missing file: message_failed with the
    reason for that file; the command's text and its other file are still sent."""
    writer.direct_chat(ALICE)
    good = backend.serve_file("ok.png", PNG, "image/png")
    files = [{"url": url.format(backend=backend.url)}, {"url": good}]
    relay.outbound.execute(
        _command("send_message", {"chat_guid": CHAT, "text": "two", "attachments": files}),
        100.0,
    )
    _run(relay, 8)
    (failed,) = _events(relay, "message_failed")
    assert failed["details"]["reason"] == reason
    assert len(_events(relay, "message_sent")) == 2  # the text and the good file
    assert [Path(a[5]).name for a in _file_sends(osascript)] == ["ok.png"]
    assert not any(p.name == "passwd" for p in _staging(writer).rglob("*"))


def test_a_file_over_the_cap_is_refused_and_nothing_is_left(
    make_relay: Any, writer: MessagesWriter, backend: StubBackend, osascript: FakeOsascript
) -> None:
    """ARCHETY_SEND_FILE_MAX_BYTES: a bigger file is too_large, never handed to Messages, and
    its staging folder is removed."""
    relay = make_relay(ARCHETY_SEND_FILE_MAX_BYTES="4096")
    writer.direct_chat(ALICE)
    url = backend.serve_file("big.png", PNG * 2, "image/png")
    relay.outbound.execute(
        _command("send_message", {"chat_guid": CHAT, "attachments": [{"url": url}]}), 100.0
    )
    _run(relay)
    (failed,) = _events(relay, "message_failed")
    assert failed["details"]["reason"] == "too_large"
    assert osascript.calls() == []
    assert list(_staging(writer).iterdir()) == []


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("../../../../Library/LaunchAgents/evil.plist", "evil.png"),
        ("..", "file.png"),
        (".hidden.png", "hidden.png"),
        ("a\u202egnp.exe", "agnp.png"),
        ("menu.pdf", "menu.png"),
        ("x" * 300 + ".png", "x" * 96 + ".png"),
    ],
)
def test_a_hostile_file_name_stays_in_its_folder(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    filename: str,
    expected: str,
) -> None:
    """`../../` names, dot names, control characters, the wrong extension and a very long name:
    the staged file is `<staging>/<id>/<safe name>`, its extension the content's."""
    writer.direct_chat(ALICE)
    url = backend.serve_file("x", PNG, "image/png")
    relay.outbound.execute(
        _command(
            "send_message",
            {"chat_guid": CHAT, "attachments": [{"url": url, "filename": filename}]},
        ),
        100.0,
    )
    _run(relay)
    ((args),) = _file_sends(osascript)
    staged = Path(args[5])
    assert staged.name == expected
    assert staged.parent.parent == _staging(writer).resolve()
    assert len(_events(relay, "message_sent")) == 1


def test_malformed_attachments_fail_the_command_and_schedules_carry_files(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, osascript: FakeOsascript
) -> None:
    """attachments that are not a list of {url}: command_failed with the reason; a scheduled
    message keeps its files, and cancelling it cancels them too."""
    writer.direct_chat(ALICE)
    relay.outbound.execute(
        _command("send_message", {"chat_guid": CHAT, "attachments": [{"name": "x"}]}), 100.0
    )
    (failed,) = _events(relay, "command_failed")
    assert "attachments[0] needs a url" in failed["details"]["reason"]
    url = backend.serve_file("later.png", PNG, "image/png")
    relay.outbound.execute(
        _command(
            "schedule_message",
            {
                "chat_guid": CHAT,
                "message_text": "later",
                "send_at": "2030-01-01T00:00:00Z",
                "attachments": [{"url": url}, {"url": url}],
            },
        ),
        100.0,
    )
    (done,) = _events(relay, "command_completed")
    assert len(done["message_ids"]) == 3 and done["details"]["files"] == 2
    assert relay.store.files_waiting() == 2
    relay.outbound.execute(
        commands.Cancel("c-cancel", done["details"]["schedule_id"], "cancel_scheduled"), 101.0
    )
    assert relay.store.files_waiting() == 0


def test_sending_disabled_stores_file_sends_and_status_shows_them(
    make_relay: Any,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """ARCHETY_SEND_ENABLED=0: a file send is stored, nothing fetched or sent; `status` says
    how many files are waiting."""
    import subprocess
    import sys

    relay = make_relay(ARCHETY_SEND_ENABLED="0")
    writer.direct_chat(ALICE)
    url = backend.serve_file("wait.png", PNG, "image/png")
    relay.outbound.execute(
        _command("send_message", {"chat_guid": CHAT, "attachments": [{"url": url}]}), 100.0
    )
    _run(relay)
    assert osascript.calls() == [] and backend.gets() == []
    relay.store.close()
    shown = subprocess.run(
        [sys.executable, "-m", "archety_relay", "status"],
        env=cli_env({**env, "ARCHETY_SEND_ENABLED": "0"}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "files waiting : 1" in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.parametrize("messages_wrote_it", [True, False])
def test_kill_9_mid_file_send_sends_it_once(
    env: dict[str, str],
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    tmp_path: Path,
    messages_wrote_it: bool,
) -> None:
    """The orchestrator answers with a picture; the relay and osascript die together while
    Messages sends it. Restarted, the relay looks the file up in chat.db: if Messages recorded
    it, no second copy; if not, it sends it once, from the same staged file."""
    chat = writer.direct_chat(ALICE)
    url = backend.serve_file("once.png", PNG, "image/png")
    backend.script(MSG, Behaviour(body={"should_respond": True, "attachments": [{"url": url}]}))
    slow = "FAKE_OSASCRIPT_SLEEP_AFTER" if messages_wrote_it else "FAKE_OSASCRIPT_SLEEP_BEFORE"
    running = {**env, **osascript.env, "FAKE_OSASCRIPT_CHATDB": str(writer.path)}
    log = Path(env["ARCHETY_LOG_FILE"])

    proc = killable_relay({**running, slow: "30"}, tmp_path)
    try:
        assert wait_until(lambda: bool(log_events(log, "relay_ready")), 20)
        writer.message("show me the menu", sender=ALICE, chat=chat)
        assert wait_until(lambda: len(_file_sends(osascript)) == 1, 20)
        if messages_wrote_it:
            assert wait_until(lambda: len(_messages_copies(writer)) == 1, 10)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    restarted = killable_relay(running, tmp_path)
    try:
        assert wait_until(lambda: len(log_events(log, "relay_ready")) == 2, 20)
        if messages_wrote_it:
            assert wait_until(lambda: bool(log_events(log, "send_recovered_as_sent")), 20)
        else:
            assert wait_until(
                lambda: any(e["ok"] for e in log_events(log, "message_send_attempt")), 20
            )
        assert len(_messages_copies(writer)) == 1
        assert len(_file_sends(osascript)) == (1 if messages_wrote_it else 2)
        sends = {a[5] for a in _file_sends(osascript)}
        assert len(sends) == 1  # the same staged file both times
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(20)
    assert len(backend.gets()) == 1  # fetched once: the retry used the staged file
