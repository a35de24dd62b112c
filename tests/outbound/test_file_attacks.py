"""Attacks on sending a file the persona sends (issue #19), through the relay's dispatcher.

Real parts: the stand-in backend serves the files, the fake osascript (see conftest) writes
what Messages would into the test's chat.db, commands are parsed from the JSON a sync carries.
Each test here is an attack; the docstring says what it did before it was fixed, or that it
held.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, FakeOsascript, osascript_arguments

from archety_relay.backend import commands
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.relay import Relay

PNG = b"\x89PNG\r\n\x1a\n" + hashlib.sha256(b"attack").digest() * 100
CHAT = f"iMessage;-;{ALICE}"


def _events(relay: Relay, kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in relay.store.pending_events() if e.event_type == kind]


def _send(relay: Relay, files: list[dict[str, str]], text: str = "") -> list[int]:
    """A send_message command with these attachments; the outgoing ids it stored."""
    params: dict[str, Any] = {"chat_guid": CHAT, "attachments": files}
    if text:
        params["text"] = text
    action = commands.to_action(
        {"command_id": "c-attack", "command_type": "send_message", "params": params}
    )
    relay.outbound.execute(action, 100.0)
    (done,) = _events(relay, "command_completed")
    return list(done["message_ids"])


def _run(relay: Relay, steps: int = 8, start: float = 100.0, every: float = 1.0) -> None:
    relay.outbound.fetch_wait = 30.0  # each step waits for its fetch, as `--once` does
    for step in range(steps):
        relay.outbound.dispatch_step(start + step * every)


def _file_sends(osascript: FakeOsascript) -> list[list[str]]:
    return [a for a in map(osascript_arguments, osascript.calls()) if len(a) > 5 and a[5]]


def _staging(writer: MessagesWriter) -> Path:
    return writer.path.parent / "Attachments" / "archety"


@pytest.mark.parametrize("location", ["http://[::1/x", "http://127.0.0.1:99999/x"])
def test_a_malformed_redirect_fails_its_file_and_the_chat_goes_on(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    location: str,
) -> None:
    """A file whose server redirects to something that is not a URL: message_failed for it,
    and the command's next file is still sent. The fetch raised instead; the row stayed
    pending, was fetched again on every backoff, and nothing after it in the chat ever went."""
    writer.direct_chat(ALICE)
    backend.set_default("/files/bad.png", Behaviour(302, headers={"Location": location}))
    good = backend.serve_file("good.png", PNG, "image/png")
    _send(relay, [{"url": backend.url + "/files/bad.png"}, {"url": good}])
    _run(relay, 12, every=60.0)
    (failed,) = _events(relay, "message_failed")
    assert failed["details"]["reason"] in ("download_failed", "scheme_not_allowed"), failed
    assert [Path(a[5]).name for a in _file_sends(osascript)] == ["good.png"]
    assert len(_events(relay, "message_sent")) == 1


def test_a_name_long_in_bytes_is_cut_to_what_the_disk_takes(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, osascript: FakeOsascript
) -> None:
    """A `filename` of 300 emoji: cut to 100 characters it was still 388 bytes, past the
    255-byte name limit of APFS and ext4, so staging it raised (the row stuck, its chat held).
    The staged name now fits in bytes too, and the picture is sent."""
    writer.direct_chat(ALICE)
    url = backend.serve_file("x", PNG, "image/png")
    _send(relay, [{"url": url, "filename": "\U0001f600" * 300 + ".png"}])
    _run(relay)
    (args,) = _file_sends(osascript)
    name = Path(args[5]).name
    assert name.endswith(".png") and name.startswith("\U0001f600")
    assert len(name.encode()) <= 255
    assert len(_events(relay, "message_sent")) == 1


@pytest.mark.parametrize("planted", ["folder", "download"])
def test_a_link_planted_in_the_staging_folder_is_never_written_through(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    tmp_path: Path,
    planted: str,
) -> None:
    """Someone on the Mac plants a symlink where the next file will be staged: the row's folder
    `archety/<id>` (or its `.download`) pointing at a folder of theirs. Nothing is written
    there: the link is replaced by a folder of our own and the file is sent from it. Through a
    linked folder, the download was written into the other folder and left there."""
    writer.direct_chat(ALICE)
    url = backend.serve_file("pic.png", PNG, "image/png")
    victim = tmp_path / "victim"
    victim.mkdir()
    (file_id,) = _send(relay, [{"url": url}])
    folder = _staging(writer) / str(file_id)
    if planted == "folder":
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.symlink_to(victim, target_is_directory=True)
    else:
        folder.mkdir(parents=True)
        (folder / ".download").symlink_to(victim / "written-through")
    _run(relay)
    assert list(victim.iterdir()) == []
    (args,) = _file_sends(osascript)
    staged = Path(args[5])
    assert staged.parent == folder.resolve() and not folder.is_symlink()
    assert len(_events(relay, "message_sent")) == 1


def test_two_files_of_one_name_are_each_confirmed_by_their_own_row(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held: the persona sends "image.png" twice in a row. The first is recorded by Messages;
    the second's osascript exits 0 but Messages writes nothing. The first's row (same
    transfer_name, same chat, seconds old) never confirms the second: it is looked for again
    later and then reported failed, and it is never sent a second time."""
    writer.direct_chat(ALICE)
    first = backend.serve_file("one", PNG, "image/png")
    second = backend.serve_file("two", PNG + b"second", "image/png")
    _send(
        relay, [{"url": first, "filename": "image.png"}, {"url": second, "filename": "image.png"}]
    )
    relay.outbound.fetch_wait = 30.0
    relay.outbound.dispatch_step(100.0)
    assert len(_events(relay, "message_sent")) == 1
    monkeypatch.setenv("FAKE_OSASCRIPT_MODE", "silent")
    for step in range(1, 6):
        relay.outbound.dispatch_step(100.0 + step * 20)
    sends = _file_sends(osascript)
    assert [Path(a[5]).name for a in sends] == ["image.png", "image.png"]
    assert sends[0][5] != sends[1][5]  # each from its own folder
    (sent,) = _events(relay, "message_sent")
    assert sent["details"]["attachments"][0]["sha256"] == hashlib.sha256(PNG).hexdigest()
    (failed,) = _events(relay, "message_failed")
    assert failed["details"]["error"].startswith("not_recorded")


def test_a_staged_path_is_an_argument_never_an_option_or_script(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, osascript: FakeOsascript
) -> None:
    """Held: a name made to look like an option or to break out of a quoted string (`-e`,
    quotes, a newline, `end tell`) reaches osascript after `--` as one absolute path with no
    control characters; the script's `-e` lines are the same as for any file."""
    writer.direct_chat(ALICE)
    url = backend.serve_file("x", PNG, "image/png")
    hostile = '-e do shell script "rm -rf ~"\nend tell\'.png'
    _send(relay, [{"url": url, "filename": hostile}])
    _run(relay)
    (call,) = [c for c in osascript.calls() if len(osascript_arguments(c)) > 5]
    args = osascript_arguments(call)
    assert args[5].startswith("/") and "\n" not in args[5] and '"' not in args[5]
    script = call[: call.index("--")]
    assert all(hostile not in line and "rm -rf" not in line for line in script)
    assert os.path.isabs(args[5]) and Path(args[5]).parent.parent == _staging(writer).resolve()
