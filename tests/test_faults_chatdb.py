"""Poison in chat.db: one bad value in one row never stops the rows behind it.

Each case writes the bad value for real into a chat.db built from Apple's schema (bytes that are
not UTF-8 stored as TEXT, a BLOB where text belongs, rows filled in late), then asserts on what the
loopback backend received and on what the log shows.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ALICE, BOB, RelayProcess, accepted_texts

from archety_relay.chatdb import ChatDb, unavailable
from archety_relay.demo.messages_writer import AttachmentSpec, MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.errors import ChatDbUnavailable
from archety_relay.relay import Relay
from archety_relay.rows import apple_date

# A private word followed by an unpaired surrogate as CESU-8 (ED A0 80): what iOS's SMS database holds.
POISON = b"hushhush\xed\xa0\x80"


def relay_all(relay: Relay, now: float | None = None) -> None:
    relay.capture_step(time.time() if now is None else now)
    while relay.deliver_step(time.monotonic()).kind == "delivered":
        pass


def poison_text(writer: MessagesWriter, table: str, column: str, rowid: int) -> None:
    """Store bytes that are not UTF-8 as a TEXT value, as a damaged or imported database does."""
    writer.conn.execute(
        f"UPDATE {table} SET {column} = CAST(? AS TEXT) WHERE ROWID = ?", (POISON, rowid)
    )


def test_undecodable_message_text_stops_nothing_and_is_not_logged(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    figures: Callable[..., None],
) -> None:
    """The review's reproduction: a `message.text` that is not UTF-8, then a normal message.
    Both reach the backend (the bad bytes as U+FFFD), no read fails, Full Disk Access is not
    blamed and the text appears in no log line."""
    chat = writer.direct_chat(ALICE)
    relay = start_relay()
    handle = writer.handle(ALICE)
    writer.conn.execute("BEGIN")
    rowid = writer.conn.execute(
        "INSERT INTO message (guid, text, handle_id, service, date, is_finished) "
        "VALUES ('POISON-1', CAST(? AS TEXT), ?, 'iMessage', ?, 1)",
        (POISON, handle, apple_date(time.time())),
    ).lastrowid
    writer.join(int(rowid or 0), chat)
    writer.conn.execute("COMMIT")
    writer.message("after the poison", sender=ALICE, chat=chat)
    backend.wait_for_messages(2)
    texts = accepted_texts(backend)
    assert texts[1] == "after the poison"
    assert texts[0].startswith("hushhush") and "\ufffd" in texts[0]
    relay.terminate()
    log = relay.log.read_text()
    assert "chatdb_unavailable" not in log and "capture_failed" not in log
    assert "Full Disk Access" not in log
    assert "hushhush" not in log
    figures(sent=2, received=2, duplicates=0)


def test_undecodable_handle_chat_and_attachment_values_are_forwarded(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Non-UTF-8 bytes in handle.id, chat.guid, chat.chat_identifier and the sender-chosen
    attachment.transfer_name, and a BLOB where message.text belongs: every row still goes out,
    in order."""
    chat = writer.direct_chat(ALICE)
    group = writer.group_chat("chat77", [ALICE, BOB])
    relay.capture_step(time.time())
    writer.message(
        "\ufffcpicture", sender=ALICE, chat=chat, attachments=[AttachmentSpec("~/a.jpeg")]
    )
    poison_text(writer, "attachment", "transfer_name", 1)
    bob = writer.message("from bob", sender=BOB, chat=group)
    poison_text(writer, "handle", "id", writer.handle(BOB))
    # Messages' own verify_chat() accepts any guid; the test writer's stand-in cannot even be
    # called with bytes that are not UTF-8, so its trigger is set aside for this one update.
    (trigger,) = writer.conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'verify_chat_update'"
    ).fetchone()
    writer.conn.execute("DROP TRIGGER verify_chat_update")
    poison_text(writer, "chat", "guid", group)
    writer.conn.execute(trigger)
    poison_text(writer, "chat", "chat_identifier", group)
    blob = writer.message("x", sender=ALICE, chat=chat, text_in_column=True)
    writer.conn.execute(
        "UPDATE message SET text = ?, attributedBody = NULL WHERE ROWID = ?",
        (sqlite3.Binary(b"text stored as a blob"), blob),
    )
    writer.message("last", sender=ALICE, chat=chat)
    relay_all(relay)
    got = [r.body for r in backend.messages()]
    assert [b["text"] for b in got] == ["picture", "from bob", "text stored as a blob", "last"]
    assert got[0]["attachments"][0]["transfer_name"].startswith("hushhush")
    assert got[1]["sender"].startswith("hushhush") and got[1]["mode"] == "group"
    assert relay.store.cursor().rowid >= bob  # type: ignore[union-attr]


def test_crash_recovery_lookup_survives_an_undecodable_sent_row(writer: MessagesWriter) -> None:
    """`was_sent` (crash recovery of a send) reads from-me rows: a bad one must not make every
    dispatch step raise, and the lookup still finds the text it is asked about."""
    chat = writer.direct_chat(ALICE)
    bad = writer.message("x", sender=ALICE, chat=chat, is_from_me=1, text_in_column=True)
    poison_text(writer, "message", "text", bad)
    writer.message("sent reply", sender=ALICE, chat=chat, is_from_me=1, text_in_column=True)
    with ChatDb(writer.path) as db:
        assert db.was_sent(f"iMessage;-;{ALICE}", "sent reply", 0)
        assert not db.was_sent(f"iMessage;-;{ALICE}", "never sent", 0)


@pytest.mark.parametrize(
    ("error", "blames_full_disk_access"),
    [
        (sqlite3.OperationalError("unable to open database file"), True),
        (sqlite3.DatabaseError("authorization denied"), True),
        (sqlite3.OperationalError("database is locked"), False),
        (sqlite3.OperationalError("disk I/O error"), False),
        (sqlite3.DatabaseError("database disk image is malformed"), False),
    ],
)
def test_full_disk_access_is_blamed_only_for_open_and_permission_errors(
    error: sqlite3.Error, blames_full_disk_access: bool
) -> None:
    """A locked or damaged chat.db is not a permissions problem; the hint must say which."""
    translated = unavailable("reading chat.db", error)
    assert ("Full Disk Access" in translated.hint) is blames_full_disk_access


def test_sqlite_error_text_never_reaches_the_error_we_raise() -> None:
    """SQLite quotes column values (message text) in its errors: only its code is kept."""
    error = sqlite3.OperationalError(
        "Could not decode to UTF-8 column 'text' with text 'hushhush\ufffd'"
    )
    translated = unavailable("reading chat.db", error)
    assert "hushhush" not in str(translated) and "hushhush" not in translated.hint


def test_a_locked_chatdb_is_reported_without_blaming_full_disk_access(
    tmp_path: Path, writer: MessagesWriter
) -> None:
    """A real lock (a rollback-journal database with an exclusive writer) is reported as busy."""
    writer.conn.execute("PRAGMA journal_mode = DELETE").fetchall()
    with ChatDb(writer.path) as db:
        db.max_rowid()
        writer.conn.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(ChatDbUnavailable) as caught:
                db.read_after(0, 10)
        finally:
            writer.conn.execute("ROLLBACK")
    assert "SQLITE_BUSY" in str(caught.value)
    assert "Full Disk Access" not in caught.value.hint
