"""Edits, unsends and read receipts become durable `/edge/sync` events, once each.

Rows are written the way Messages.app writes them (an edit leaves `text` NULL with the new text
only in `attributedBody`; an unsend clears the body and sets `is_empty`); the relay's steps run,
and the assertions are on the events the loopback backend received in `/edge/sync`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, BOB, relay_life, run_cli

from archety_relay.chatdb.reader import ChatDb
from archety_relay.config import Settings
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay


def look(relay: Relay) -> None:
    """What the capture thread does each time chat.db changes."""
    now = time.time()
    relay.capture_step(now)
    relay.changes_step(now)


def synced(relay: Relay, backend: StubBackend) -> list[dict[str, Any]]:
    relay.sync_step(time.time())
    return backend.requests_to("/edge/sync")[-1].body["events"]


def of_type(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event_type"] in types]


def test_edit_with_null_text_reports_new_and_previous_text(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """An edit (text NULL, new text only in attributedBody) is one `message_edited` event with
    the full new text, what it said before, and when."""
    chat = writer.direct_chat(ALICE)
    look(relay)
    rowid = writer.message("see you at 7pm", sender=ALICE, chat=chat, text_in_column=True)
    look(relay)
    writer.edit(rowid, "see you at 8pm")
    assert writer.conn.execute("SELECT text FROM message WHERE ROWID = ?", (rowid,)).fetchone() == (
        None,
    )
    look(relay)
    look(relay)  # nothing new: no second event
    [event] = of_type(synced(relay, backend), "message_edited")
    assert event["chat_guid"] == f"iMessage;-;{ALICE}"
    assert event["message_guid"] == writer.guid_of(rowid)
    assert event["details"]["text"] == "see you at 8pm"
    assert event["details"]["previous_text"] == "see you at 7pm"
    assert event["details"]["edited_at"].endswith("+00:00")
    assert event["event_id"] and event["timestamp"]


def test_an_edit_made_between_capture_and_the_first_look_is_reported(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The quick-edit race: the row is captured (and posted) as first written, then edited
    before the change watch has looked at it. The watch compares with what was captured, so
    the edit is one `message_edited` event, not taken for the original."""
    chat = writer.direct_chat(ALICE)
    look(relay)
    rowid = writer.message("meet at the station", sender=ALICE, chat=chat)
    now = time.time()
    relay.capture_step(now)
    writer.edit(rowid, "meet at the bridge")
    relay.changes_step(now)
    relay.deliver_step(time.monotonic())
    assert [m.body["text"] for m in backend.messages()] == ["meet at the station"]
    [event] = of_type(synced(relay, backend), "message_edited")
    assert event["message_guid"] == writer.guid_of(rowid)
    assert event["details"]["text"] == "meet at the bridge"
    assert event["details"]["previous_text"] == "meet at the station"


def test_a_row_edited_before_capture_is_posted_edited_with_no_event(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Edited before the relay read it at all: the message itself carries the new text, and
    no `message_edited` repeats it, even when the watch looked at the row before capture
    did (a row held for its chat join)."""
    chat = writer.direct_chat(ALICE)
    look(relay)
    rowid = writer.message("on my way", sender=ALICE, chat=chat, join_chat=False)
    now = time.time()
    relay.capture_step(now)  # held: no chat join yet
    relay.changes_step(now)
    writer.edit(rowid, "on my way, 5 min")
    writer.join(rowid, chat)
    look(relay)
    look(relay)
    relay.deliver_step(time.monotonic())
    assert [m.body["text"] for m in backend.messages()] == ["on my way, 5 min"]
    assert of_type(synced(relay, backend), "message_edited") == []


def test_previous_text_comes_from_apples_edit_history(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Edited twice, the second time after the relay first looked: `previous_text` is the
    version before the last, from Apple's edit history in message_summary_info."""
    chat = writer.direct_chat(ALICE)
    rowid = writer.message("first", sender=ALICE, chat=chat)
    writer.edit(rowid, "second")
    look(relay)  # first sight: fingerprinted as it is, already edited
    writer.edit(rowid, "third")
    look(relay)
    [event] = of_type(synced(relay, backend), "message_edited")
    assert (event["details"]["text"], event["details"]["previous_text"]) == ("third", "second")


def test_unsend_reports_parts_and_fully_unsent(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """An unsend (rp lists part 0, body cleared, is_empty = 1) is one `message_unsent` event,
    not an edit."""
    chat = writer.direct_chat(ALICE)
    look(relay)
    rowid = writer.message("wrong chat, sorry", sender=ALICE, chat=chat)
    look(relay)
    writer.unsend(rowid)
    look(relay)
    events = synced(relay, backend)
    assert of_type(events, "message_edited") == []
    [event] = of_type(events, "message_unsent")
    assert event["message_guid"] == writer.guid_of(rowid)
    assert event["details"]["parts"] == [0]
    assert event["details"]["fully_unsent"] is True
    assert event["details"]["unsent_at"]


def test_read_receipt_of_a_persona_message(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The recipient reading the persona's message is one `message_read`; an incoming message
    read on the Mac is not."""
    chat = writer.direct_chat(ALICE)
    look(relay)
    own = writer.message("sent by the persona", sender=None, chat=chat, is_from_me=1)
    theirs = writer.message("from alice", sender=ALICE, chat=chat)
    look(relay)
    writer.mark_read(own)
    writer.mark_read(theirs)
    look(relay)
    [event] = of_type(synced(relay, backend), "message_read")
    assert event["message_guid"] == writer.guid_of(own)
    assert event["details"]["read_at"]


def test_persona_message_older_than_the_window_still_gets_its_read_receipt(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """An unread persona message stays watched after it leaves the 20-minute window."""
    chat = writer.direct_chat(ALICE)
    hour_ago = time.time() - 3600
    own = writer.message("sent an hour ago", sender=None, chat=chat, is_from_me=1, sent_at=hour_ago)
    look_at = hour_ago + 10
    relay.capture_step(look_at)
    relay.changes_step(look_at)  # seen while it was recent
    writer.mark_read(own)
    look(relay)
    [event] = of_type(synced(relay, backend), "message_read")
    assert event["message_guid"] == writer.guid_of(own)


def test_old_history_is_not_reported_on_first_start(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Rows already edited or read before the relay first looked are fingerprinted silently."""
    chat = writer.group_chat("chat900", [ALICE, BOB])
    rowid = writer.message("old", sender=ALICE, chat=chat)
    writer.edit(rowid, "old, edited")
    own = writer.message("mine", sender=None, chat=chat, is_from_me=1)
    writer.mark_read(own)
    look(relay)
    assert of_type(synced(relay, backend), "message_edited", "message_read") == []


def test_restart_between_change_and_sync_loses_nothing_and_repeats_nothing(
    settings: Settings, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A relay stopped after storing an event and one stopped before looking at a change both
    report each change exactly once after a restart."""
    chat = writer.direct_chat(ALICE)
    first = writer.message("one", sender=ALICE, chat=chat)
    second = writer.message("two", sender=ALICE, chat=chat)
    backend.ack_events = True

    relay_life(settings, look)  # fingerprints taken
    writer.edit(first, "one, edited")
    relay_life(settings, look)  # event stored, relay stops before any sync
    writer.edit(second, "two, edited")  # changed while the relay is down
    relay_life(
        settings, lambda r: (look(r), r.sync_step(time.time()), look(r), r.sync_step(time.time()))
    )
    relay_life(settings, lambda r: (look(r), r.sync_step(time.time())))
    edits = of_type(backend.sync_events(), "message_edited")
    assert sorted(e["details"]["text"] for e in edits) == ["one, edited", "two, edited"]
    assert len({e["event_id"] for e in edits}) == 2


def test_window_read_stays_on_the_date_index(writer: MessagesWriter, settings: Settings) -> None:
    """The watch query walks message_idx_date; it never scans the message table."""
    chatdb = ChatDb(settings.chat_db)
    chatdb.max_rowid()
    conn = chatdb._conn
    assert conn is not None
    from archety_relay.chatdb import reader as module

    sql = module._WATCH_SQL.format(extra=chatdb._extra(module._WATCH_COLUMNS))
    plan = " ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (0,)).fetchall())
    chatdb.close()
    assert "message_idx_date" in plan and "SCAN m" not in plan


def test_daemon_syncs_soon_after_an_edit_instead_of_waiting_for_the_interval(
    start_relay: Any, writer: MessagesWriter, backend: StubBackend
) -> None:
    """With an hour between scheduled syncs, an edit still reaches the backend in a sync
    started by the event itself (the debounced wake-up)."""
    chat = writer.direct_chat(ALICE)
    relay = start_relay({"ARCHETY_SYNC_INTERVAL": "3600"})
    assert backend.wait_for(lambda b: len(b.requests_to("/edge/sync")) >= 1, 10)
    rowid = writer.message("at 7pm", sender=ALICE, chat=chat)
    assert backend.wait_for_messages(1)
    writer.edit(rowid, "at 8pm")  # at once: the row's first fingerprint came with its capture
    assert backend.wait_for(lambda b: bool(of_type(b.sync_events(), "message_edited")), 10)
    relay.terminate()
    [event] = of_type(backend.sync_events(), "message_edited")
    assert event["details"]["text"] == "at 8pm"


@pytest.mark.slow
def test_window_bench_smoke_runs_and_finds_every_edit(tmp_path: Path) -> None:
    """`bench/window.py --smoke` exits 0 and its change watch found each edit on both chat.dbs
    (the figures themselves are not judged here)."""
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "window.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "window.json").read_text())
    assert figures["small"]["events"] == figures["large"]["events"] == figures["looks"]
    assert figures["large"]["history"] > 0


def test_once_reports_an_edit_made_since_the_last_run(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """`--once` looks at the recent window too: an edit between two runs is in the second
    run's sync."""
    chat = writer.direct_chat(ALICE)
    rowid = writer.message("at 7", sender=ALICE, chat=chat)
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    writer.edit(rowid, "at 8")
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    [event] = of_type(backend.requests_to("/edge/sync")[-1].body["events"], "message_edited")
    assert event["details"]["text"] == "at 8"


def test_partial_unsend_names_the_part_and_is_not_fully_unsent(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """One part of a two-part message withdrawn (rp = [1], the text part kept): the event
    names part 1 and says the message is not fully unsent."""
    chat = writer.direct_chat(ALICE)
    look(relay)
    rowid = writer.message("two photos", sender=ALICE, chat=chat)
    look(relay)
    writer.unsend(rowid, parts=(1,), whole=False)
    look(relay)
    [event] = of_type(synced(relay, backend), "message_unsent")
    assert event["details"]["parts"] == [1]
    assert event["details"]["fully_unsent"] is False
