"""Staged files are pruned (issue #19): a file Messages may be reading from is kept 7 days after
its send, one it holds a copy of elsewhere goes at once, and what a crash left behind (a
finished row's folder, a folder with no row) goes too; a folder in use, a symlink and anything
not named like an outgoing id are never touched.

Real parts: files in the Attachments folder beside a real chat.db (MessagesWriter), the state
file, the stand-in backend serving the picture, the fake osascript writing what Messages would,
and once the daemon in a subprocess on its maintenance timer.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import ALICE, FakeOsascript, log_events, wait_until

from archety_relay.backend import commands
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.outbound import retention
from archety_relay.outbound.retention import KEEP_SECONDS, Folder, decide
from archety_relay.relay import Relay
from archety_relay.store import NewOutgoing, StagedRow, open_store

PNG = b"\x89PNG\r\n\x1a\n" + hashlib.sha256(b"kept").digest() * 100
CHAT = f"iMessage;-;{ALICE}"
DAY = 86400.0


def _staging(writer: MessagesWriter) -> Path:
    return writer.path.parent / "Attachments" / "archety"


def _send_picture(relay: Relay, backend: StubBackend, name: str = "menu.png") -> None:
    url = backend.serve_file(name, PNG, "image/png")
    relay.outbound.execute(
        commands.to_action(
            {
                "command_id": f"c-{name}",
                "command_type": "send_message",
                "params": {"chat_guid": CHAT, "attachments": [{"url": url}]},
            }
        ),
        100.0,
    )
    relay.outbound.fetch_wait = 30.0  # each step waits for the fetch it starts, as --once does
    for step in range(6):
        relay.outbound.dispatch_step(100.0 + step)


def _leftover(root: Path, name: str, *, age_days: float = 0.0) -> Path:
    """A staging folder with a file in it, as a crash would leave it, `age_days` old on disk."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "picture.png").write_bytes(PNG)
    when = time.time() - age_days * DAY
    for path in (folder / "picture.png", folder):
        os.utime(path, (when, when))
    return folder


def _finished_at(relay: Relay, outgoing_id: int) -> float:
    return relay.store.staged_rows([outgoing_id])[outgoing_id].updated_at


def test_a_file_messages_reads_from_is_kept_seven_days_then_pruned(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages keeps the staged path as the attachment's file (what public evidence says it
    does for a file under ~/Library/Messages): the folder stays after the send and through
    prunes for 7 days after it, and goes at the first prune after that (staged_files_pruned)."""
    writer.direct_chat(ALICE)
    monkeypatch.setenv("FAKE_OSASCRIPT_FILE_MODE", "reference")
    _send_picture(relay, backend)
    (folder,) = _staging(writer).iterdir()
    finished = _finished_at(relay, int(folder.name))
    with structlog.testing.capture_logs() as logged:
        assert relay.prune_staged(finished + 1) == 0
        assert relay.prune_staged(finished + KEEP_SECONDS - 60) == 0
        assert (folder / "menu.png").read_bytes() == PNG
        assert relay.prune_staged(finished + KEEP_SECONDS + 60) == 1
    assert not folder.exists()
    assert [e["count"] for e in logged if e["event"] == "staged_files_pruned"] == [1]


def test_what_a_crash_left_behind_is_pruned_and_work_in_progress_is_not(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
) -> None:
    """A folder whose row failed or was cancelled goes at once; so does a sent row's folder when
    chat.db shows Messages' own copy elsewhere; a folder with no row goes once 7 days old. A
    pending row's folder and one whose send is under way (busy) stay, whatever the time."""
    writer.direct_chat(ALICE)
    root = _staging(writer)
    _send_picture(relay, backend)  # Messages copies it: the folder went with the send
    (sent,) = relay.store.staged_rows(range(1, 10)).values()
    assert not (root / str(sent.id)).exists()
    _leftover(root, str(sent.id))  # ... unless a crash came between the send and the clean-up
    pending, cancelled, busy = relay.store.add_outgoing(
        [NewOutgoing(CHAT, "", 9e9, "send_message") for _ in range(3)], 100.0
    )
    assert relay.store.cancel(cancelled, 101.0) and relay.store.cancel(busy, 101.0)
    for ident in (pending, cancelled, busy):
        _leftover(root, str(ident))
    _leftover(root, "9001", age_days=8)  # no row: pruned after 30 days, or another state file
    _leftover(root, "9002", age_days=1)
    now = time.time()
    removed = relay.staged.prune(now, busy=[busy])
    assert removed == 3
    assert sorted(p.name for p in root.iterdir()) == sorted([str(pending), str(busy), "9002"])
    assert relay.staged.prune(now + 30 * DAY, busy=[busy]) == 1  # 9002, now old enough
    assert sorted(p.name for p in root.iterdir()) == sorted([str(pending), str(busy)])


def test_links_and_folders_not_ours_are_left_alone_and_logged_once(
    relay: Relay, writer: MessagesWriter, tmp_path: Path
) -> None:
    """A symlink named like an outgoing id pointing out of the staging root, a folder and a
    file with other names: nothing is removed or followed, and each is logged once however
    often the prune runs. A staging root that is itself a link is not pruned at all."""
    root = _staging(writer)
    root.mkdir(parents=True)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (root / "77").symlink_to(outside)
    (root / "notes").mkdir()
    (root / "notes" / "a.txt").write_text("x")
    (root / "README").write_text("x")
    old = time.time() - 40 * DAY
    os.utime(root / "notes", (old, old))
    with structlog.testing.capture_logs() as logged:
        for day in range(3):
            assert relay.prune_staged(time.time() + day * 30 * DAY) == 0
    assert (outside / "keep.txt").read_text() == "mine" and (root / "77").is_symlink()
    assert (root / "notes" / "a.txt").exists() and (root / "README").exists()
    alone = sorted(e["folder"] for e in logged if e["event"] == "staged_folder_left_alone")
    assert alone == ["77", "README", "notes"]

    (root / "77").unlink()
    root.rename(root.with_name("elsewhere"))
    root.symlink_to(root.with_name("elsewhere"))
    _leftover(root.with_name("elsewhere"), "5", age_days=40)
    with structlog.testing.capture_logs() as logged:
        assert relay.prune_staged(time.time()) == 0
        assert relay.prune_staged(time.time()) == 0
    assert (root.with_name("elsewhere") / "5" / "picture.png").exists()
    assert [e["event"] for e in logged] == ["staging_root_is_a_link"]


def _row(status: str, updated_at: float = 0.0, attempts: int = 1) -> StagedRow:
    return StagedRow(7, status, attempts, updated_at, "GUID" if status == "sent" else None)


HERE = Path("/Users/p/Library/Messages/Attachments/archety/7")
ELSEWHERE = "/Users/p/Library/Messages/Attachments/4a/10/F00D/menu.png"


@pytest.mark.parametrize(
    ("row", "held", "busy", "age", "expected"),
    [
        (_row("pending"), None, (), 99 * DAY, (False, retention.IN_USE)),
        (_row("sending"), None, (), 99 * DAY, (False, retention.IN_USE)),
        (_row("cancelled"), None, (7,), 99 * DAY, (False, retention.IN_USE)),
        (_row("failed"), None, (), 0.0, (True, retention.NOT_SENT)),
        (_row("cancelled", attempts=0), None, (), 0.0, (True, retention.NOT_SENT)),
        (_row("missed"), None, (), 0.0, (True, retention.NOT_SENT)),
        (_row("sent"), [ELSEWHERE], (), 0.0, (True, retention.MESSAGES_COPY)),
        (_row("sent"), [str(HERE / "menu.png")], (), 6.9 * DAY, (False, retention.KEPT)),
        (_row("sent"), [], (), 6.9 * DAY, (False, retention.KEPT)),
        (_row("sent"), None, (), 6.9 * DAY, (False, retention.KEPT)),
        (_row("sent"), None, (), 7 * DAY, (True, retention.EXPIRED)),
        (None, None, (), 6.9 * DAY, (False, retention.NO_ROW)),
        (None, None, (), 7 * DAY, (True, retention.NO_ROW)),
    ],
)
def test_the_decision_over_values(
    row: StagedRow | None,
    held: list[str] | None,
    busy: tuple[int, ...],
    age: float,
    expected: tuple[bool, str],
) -> None:
    """Keep or remove, for each row status, what chat.db names, the ids in use and the age
    (since the row finished, or the folder's own age when it has no row)."""
    now = 1000 * DAY
    folder = Folder("7", True, now - age)
    if row is not None:
        row = StagedRow(row.id, row.status, row.attempts, now - age, row.apple_guid)
    verdict = decide(folder, row, held, busy, HERE, now)
    assert (verdict.remove, verdict.reason) == expected


@pytest.mark.parametrize("folder", [Folder("7", False, 0.0), Folder("x7", True, 0.0)])
def test_a_link_a_file_or_another_name_is_never_ours(folder: Folder) -> None:
    """Only a real directory named with digits is an outgoing id's folder; the rest is kept."""
    verdict = decide(folder, None, None, (), HERE, 1e12)
    assert (verdict.remove, verdict.reason) == (False, retention.NOT_OURS)


def test_the_daemon_prunes_on_its_maintenance_timer(
    start_relay: Any, env: dict[str, str], writer: MessagesWriter
) -> None:
    """The running relay prunes at start and every hour beside the state file: a cancelled
    send's folder left by a crash is gone, with `staged_files_pruned` in the log."""
    store = open_store(Path(env["ARCHETY_STATE_DIR"]))
    (ident,) = store.add_outgoing([NewOutgoing(CHAT, "", 9e9, "send_message")], time.time())
    assert store.cancel(ident, time.time())
    store.close()
    folder = _leftover(_staging(writer), str(ident))
    relay = start_relay()
    assert wait_until(lambda: bool(log_events(relay.log, "staged_files_pruned")), 20)
    relay.terminate()
    assert not folder.exists()
    assert log_events(relay.log, "staged_files_pruned")[0]["count"] == 1
