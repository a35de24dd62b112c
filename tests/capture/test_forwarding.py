"""Which chat.db rows reach the backend, and with which fields: the forwarding rules.

Each test writes rows the way Messages.app does, runs the relay's steps, and asserts on the JSON
the loopback backend received.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ALICE, BOB, no_picture_wait

from archety_relay import config
from archety_relay.chatdb.reader import ChatDb
from archety_relay.chatdb.rows import APPLE_EPOCH
from archety_relay.demo.messages_writer import AttachmentSpec, MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay
from archety_relay.store import open_store


def relay_all(relay: Relay, now: float | None = None) -> None:
    relay.capture_step(time.time() if now is None else now)
    while relay.deliver_step(time.monotonic()).kind == "delivered":
        pass


def bodies(backend: StubBackend) -> list[dict[str, Any]]:
    return [r.body for r in backend.messages()]


def start(relay: Relay) -> None:
    """First start: the cursor is placed at the current end of chat.db."""
    relay.capture_step(time.time())


def test_direct_message_carries_every_field(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A direct iMessage becomes exactly the contract's body."""
    chat = writer.direct_chat(ALICE)
    start(relay)
    sent_at = time.time() - 5
    writer.message("hello there", sender=ALICE, chat=chat, sent_at=sent_at, guid="GUID-1")
    relay_all(relay)
    assert bodies(backend) == [
        {
            "chat_guid": f"iMessage;-;{ALICE}",
            "mode": "direct",
            "sender": ALICE,
            "text": "hello there",
            "timestamp": int(sent_at),
            "participants": [ALICE],
            "message_guid": "GUID-1",
            "chat_identifier": ALICE,
            "service": "iMessage",
            "kind": "text",
            "metadata": {"has_attachment": False, "is_first_message": True},
        }
    ]


def test_body_says_service_first_message_and_persona(
    env: dict[str, str],
    tmp_path: Path,
    writer: MessagesWriter,
    backend: StubBackend,
) -> None:
    """A group's chat_identifier (the previous client's key), the message's service, whether
    the chat had anything before it, and the persona from ARCHETY_PERSONA_ID/PHONE."""
    settings = config.load(
        environ={**env, "ARCHETY_PERSONA_ID": "luna", "ARCHETY_PERSONA_PHONE": "+15555550199"},
        cwd=tmp_path,
    )
    group = writer.group_chat("chat6553", [ALICE, BOB])
    direct = writer.direct_chat(ALICE)
    writer.message("old history", sender=ALICE, chat=direct)
    store = open_store(settings.state_dir)
    with ChatDb(settings.chat_db) as chatdb:
        relay = Relay(settings, chatdb, store)
        start(relay)
        writer.message("first in the group", sender=BOB, chat=group)
        sms = writer.message("by sms", sender=ALICE, chat=direct)
        writer.conn.execute("UPDATE message SET service = 'SMS' WHERE ROWID = ?", (sms,))
        writer.message("second in the group", sender=ALICE, chat=group)
        relay_all(relay)
        relay.backend.close()
    store.close()
    seen = [
        (
            b["text"],
            b["chat_identifier"],
            b["service"],
            b["metadata"]["is_first_message"],
            b["persona_id"],
            b["persona_phone"],
        )
        for b in bodies(backend)
    ]
    assert seen == [
        ("first in the group", "chat6553", "iMessage", True, "luna", "+15555550199"),
        ("by sms", ALICE, "SMS", False, "luna", "+15555550199"),
        ("second in the group", "chat6553", "iMessage", False, "luna", "+15555550199"),
    ]


def test_text_only_in_attributed_body_is_forwarded(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Recent macOS leaves message.text NULL; the text comes from attributedBody."""
    chat = writer.direct_chat(ALICE)
    start(relay)
    writer.message("only in the blob ✨", sender=ALICE, chat=chat, text_in_column=False)
    relay_all(relay)
    row = writer.conn.execute("SELECT text FROM message").fetchone()
    assert row == (None,)
    assert [b["text"] for b in bodies(backend)] == ["only in the blob ✨"]


def test_group_chat_mode_participants_and_sender(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """chat.style 43 is a group: mode, the chat's guid and all its handles go out."""
    group = writer.group_chat("chat123456", [ALICE, BOB])
    start(relay)
    writer.message("hi all", sender=BOB, chat=group)
    relay_all(relay)
    (body,) = bodies(backend)
    assert (body["mode"], body["chat_guid"], body["sender"]) == (
        "group",
        "iMessage;+;chat123456",
        BOB,
    )
    assert body["participants"] == [ALICE, BOB]


def test_group_recognised_by_guid_when_style_is_unknown(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A ';+;' guid is a group even with an unexpected style value."""
    chat = writer.chat("any;+;chat999", 99, [ALICE, BOB], identifier="chat999")
    start(relay)
    writer.message("hey", sender=ALICE, chat=chat)
    relay_all(relay)
    assert [b["mode"] for b in bodies(backend)] == ["group"]


def test_skipped_rows_advance_the_cursor_and_never_reach_the_backend(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """From me, tapbacks, non-ordinary items, empty and too-old rows are skipped with reasons."""
    chat = writer.direct_chat(ALICE)
    start(relay)
    writer.message("my own reply", sender=ALICE, chat=chat, is_from_me=1)
    writer.message("Loved “hi”", sender=ALICE, chat=chat, associated_message_type=2000)
    writer.message(None, sender=ALICE, chat=chat, item_type=1)
    writer.message(None, sender=ALICE, chat=chat)
    writer.message(
        "from three weeks ago", sender=ALICE, chat=chat, sent_at=time.time() - 21 * 86400
    )
    writer.message("the real one", sender=ALICE, chat=chat)
    t0 = time.time()
    first = relay.capture_step(t0)
    assert first.holding  # the empty row may still be filled in: it waits its turn
    result = relay.capture_step(t0 + relay.settings.chat_join_wait + 0.1)
    assert dict(first.skipped + result.skipped) == {
        "from_me": 1,
        "reaction": 1,
        "not_ordinary_item": 1,
        "empty": 1,
        "too_old": 1,
    }
    relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == ["the real one"]
    assert (
        relay.store.cursor().rowid
        == writer.conn.execute(  # type: ignore[union-attr]
            "SELECT MAX(ROWID) FROM message"
        ).fetchone()[0]
    )


def test_attachment_placeholder_removed_and_attachment_listed(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """U+FFFC leaves the text; the attachment's fields go out with ~ expanded. (The files are
    not on disk and the relay is told not to wait for them: they go as pending.)"""
    chat = writer.direct_chat(ALICE)
    no_picture_wait(relay)
    start(relay)
    writer.message(
        "\ufffclook at this",
        sender=ALICE,
        chat=chat,
        attachments=[
            AttachmentSpec(
                "~/Library/Messages/Attachments/ab/IMG_1.heic",
                "image/heic",
                "IMG_1.heic",
                2048,
                "public.heic",
            )
        ],
    )
    writer.message(
        "\ufffc",
        sender=ALICE,
        chat=chat,
        attachments=[AttachmentSpec("~/Library/Messages/Attachments/cd/a.jpeg")],
    )
    relay_all(relay)
    first, second = bodies(backend)
    assert first["text"] == "look at this"
    (att,) = first["attachments"]
    assert att["path"] == os.path.expanduser("~/Library/Messages/Attachments/ab/IMG_1.heic")
    assert not att["path"].startswith("~")
    assert (att["mime_type"], att["transfer_name"], att["total_bytes"], att["uti"]) == (
        "image/heic",
        "IMG_1.heic",
        2048,
        "public.heic",
    )
    assert att["guid"] and att["status"] == "pending" and att["is_photo"] is True
    assert second["text"] == "" and len(second["attachments"]) == 1


def test_message_in_two_chats_goes_out_once(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A row joined to two chats is one message, sent to the oldest chat."""
    first = writer.direct_chat(ALICE)
    second = writer.chat("SMS;-;" + ALICE, 45, [ALICE], identifier=ALICE)
    start(relay)
    rowid = writer.message("once please", sender=ALICE, chat=first)
    writer.conn.execute("BEGIN")
    writer.join(rowid, second)
    writer.conn.execute("COMMIT")
    relay_all(relay)
    assert [(b["text"], b["chat_guid"]) for b in bodies(backend)] == [
        ("once please", f"iMessage;-;{ALICE}")
    ]


def test_dates_in_seconds_and_nanoseconds(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Old macOS stored seconds since 2001, new stores nanoseconds: both become Unix seconds."""
    chat = writer.direct_chat(ALICE)
    start(relay)
    now = int(time.time())
    rowid = writer.message("old-style date", sender=ALICE, chat=chat)
    writer.conn.execute("UPDATE message SET date = ? WHERE ROWID = ?", (now - APPLE_EPOCH, rowid))
    writer.message("new-style date", sender=ALICE, chat=chat, sent_at=now)
    relay_all(relay)
    assert [b["timestamp"] for b in bodies(backend)] == [now, now]


def test_first_start_does_not_replay_history(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Messages already in chat.db when the relay first starts are history, not new."""
    chat = writer.direct_chat(ALICE)
    writer.message("old news", sender=ALICE, chat=chat)
    relay_all(relay)
    writer.message("new", sender=ALICE, chat=chat)
    relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == ["new"]


def test_row_waits_for_its_chat_join_then_goes_out_with_the_chat(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A message row visible before its chat_message_join is held, not skipped forever."""
    group = writer.group_chat("chat42", [ALICE, BOB])
    start(relay)
    t0 = time.time()
    rowid = writer.message("join comes later", sender=BOB, chat=group, join_chat=False)
    writer.message("behind it", sender=BOB, chat=group)
    held = relay.capture_step(t0)
    assert held.holding and held.enqueued == 0
    writer.conn.execute("BEGIN")
    writer.join(rowid, group)
    writer.conn.execute("COMMIT")
    relay_all(relay, now=t0 + 0.2)
    assert [(b["text"], b["mode"]) for b in bodies(backend)] == [
        ("join comes later", "group"),
        ("behind it", "group"),
    ]


def test_row_whose_chat_join_never_comes_is_forwarded_after_the_wait(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """After ARCHETY_CHAT_JOIN_WAIT the message goes out as a direct message from its sender."""
    start(relay)
    t0 = time.time()
    writer.message("orphan", sender=ALICE, chat=None)
    assert relay.capture_step(t0).holding
    relay_all(relay, now=t0 + relay.settings.chat_join_wait + 0.1)
    assert [(b["text"], b["chat_guid"], b["mode"]) for b in bodies(backend)] == [
        ("orphan", f"iMessage;-;{ALICE}", "direct")
    ]


def test_nulls_unknown_styles_and_missing_handles_never_crash(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """NULL in every column the reader touches: forwarded with what can be read, or skipped."""
    chat = writer.direct_chat(ALICE)
    start(relay)
    writer.conn.execute(
        "INSERT INTO message (guid, text, attributedBody, handle_id, service, date, is_from_me, "
        "item_type, associated_message_type) VALUES ('NULLS', NULL, NULL, NULL, NULL, NULL, "
        "NULL, NULL, NULL)"
    )
    rid = writer.message("no handle row", sender=None, chat=chat)
    writer.conn.execute("UPDATE message SET handle_id = 9999 WHERE ROWID = ?", (rid,))
    writer.conn.execute("UPDATE chat SET style = NULL, chat_identifier = NULL")
    writer.message(
        "corrupt blob",
        sender=ALICE,
        chat=chat,
        attributed_body=b"\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\x84garbage",
    )
    writer.message(
        "fine", sender=ALICE, chat=chat, attributed_body=sqlite3.Binary(b""), text_in_column=True
    )
    t0 = time.time()
    wait = relay.settings.chat_join_wait + 0.1
    assert relay.capture_step(t0).holding  # the all-NULL row has no chat join: wait for it
    second = relay.capture_step(t0 + wait)
    assert second.holding  # the unreadable blob is empty: it may yet be filled in
    result = relay.capture_step(t0 + 2 * wait)
    relay_all(relay)
    assert dict(second.skipped + result.skipped) == {"empty": 2, "no_sender": 1}
    assert [b["text"] for b in bodies(backend)] == ["fine"]


def test_chatdb_is_safe_to_share_between_the_capture_and_dispatch_threads(
    writer: MessagesWriter,
) -> None:
    """The capture thread and the dispatcher (looking up interrupted sends) read through one
    ChatDb at once; neither may see the other's transaction or connection."""
    import threading

    from archety_relay.chatdb.reader import ChatDb

    chat = writer.direct_chat(ALICE)
    for i in range(20):
        writer.message(f"m{i}", sender=ALICE, chat=chat)
    errors: list[BaseException] = []

    def hammer(work: Callable[[ChatDb], object], db: ChatDb) -> None:
        try:
            for _ in range(400):
                work(db)
        except BaseException as exc:
            errors.append(exc)

    with ChatDb(writer.path) as db:
        threads = [
            threading.Thread(
                target=hammer, args=(lambda d: (d.changed(), d.read_after(0, 50)), db)
            ),
            threading.Thread(
                target=hammer, args=(lambda d: d.was_sent(f"iMessage;-;{ALICE}", "x", 0), db)
            ),
            threading.Thread(target=hammer, args=(lambda d: d.max_rowid(), db)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
