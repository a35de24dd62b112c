"""Poison in chat.db: one bad value in one row never stops the rows behind it.

Each case writes the bad value for real into a chat.db built from Apple's schema (bytes that are
not UTF-8 stored as TEXT, a BLOB where text belongs, rows filled in late), then asserts on what the
loopback backend received and on what the log shows.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ALICE, BOB, RelayProcess, accepted_texts, run_cli
from structlog.testing import capture_logs

from archety_relay.capture.new_rows import GROUP_JOIN_WAIT_FACTOR
from archety_relay.chatdb import typedstream
from archety_relay.chatdb.reader import ChatDb, unavailable
from archety_relay.chatdb.rows import apple_date
from archety_relay.config import Settings
from archety_relay.demo.messages_writer import AttachmentSpec, MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.errors import ChatDbUnavailable
from archety_relay.relay import Relay

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
        "\ufffcpicture",
        sender=ALICE,
        chat=chat,
        attachments=[AttachmentSpec("~/a.pdf", "application/pdf", uti="com.adobe.pdf")],
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
    """The send checks (`find_sent` after osascript, `was_sent` after a crash) read from-me rows:
    one with text that is not UTF-8, or an attributedBody stored as TEXT, must not make every
    dispatch step raise, and the lookup still finds the text it is asked about."""
    chat = writer.direct_chat(ALICE)
    bad = writer.message("x", sender=ALICE, chat=chat, is_from_me=1, text_in_column=True)
    poison_text(writer, "message", "text", bad)
    odd = writer.message(None, sender=ALICE, chat=chat, is_from_me=1)
    writer.conn.execute(
        "UPDATE message SET attributedBody = CAST(? AS TEXT) WHERE ROWID = ?", (POISON, odd)
    )
    sent = writer.message("sent reply", sender=ALICE, chat=chat, is_from_me=1)
    guid = f"iMessage;-;{ALICE}"
    with ChatDb(writer.path) as db:
        assert db.was_sent(guid, "sent reply", 0)
        assert not db.was_sent(guid, "never sent", 0)
        found = db.find_sent([guid], ALICE, "sent reply", 0)
        assert found is not None and found.rowid == sent
        assert db.find_sent([guid], ALICE, "never sent", 0) is None


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


def _fill_attachment(writer: MessagesWriter, rowid: int) -> None:
    writer.conn.execute("BEGIN")
    att = writer.conn.execute(
        "INSERT INTO attachment (guid, original_guid, filename, mime_type, transfer_name, "
        "total_bytes, uti) "
        "VALUES ('ATT-LATE', 'ATT-LATE', '~/late.pdf', 'application/pdf', 'late.pdf', 10, 'com.adobe.pdf')"
    ).lastrowid
    writer.conn.execute(
        "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?, ?)",
        (rowid, att),
    )
    writer.conn.execute("COMMIT")


def test_text_or_attachment_written_after_the_row_is_not_lost(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The review's reproduction (#4): a joined row with no text whose attributedBody is filled
    a moment later, and one whose attachment is joined a moment later: both reach the backend,
    in order, instead of being skipped as empty on first sight."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    t0 = time.time()
    first = writer.message(None, sender=ALICE, chat=chat)
    second = writer.message(None, sender=ALICE, chat=chat)
    assert relay.capture_step(t0).holding
    writer.conn.execute(
        "UPDATE message SET attributedBody = ? WHERE ROWID = ?",
        (typedstream.encode("filled in later"), first),
    )
    assert relay.capture_step(t0 + 0.2).holding
    _fill_attachment(writer, second)
    relay_all(relay, now=t0 + 0.4)
    got = [r.body for r in backend.messages()]
    assert [b["text"] for b in got] == ["filled in later", ""]
    assert got[1]["attachments"][0]["transfer_name"] == "late.pdf"


def test_a_row_that_stays_empty_is_passed_with_a_warning_and_stops_nothing(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A row still empty after ARCHETY_CHAT_JOIN_WAIT is skipped with a warning an operator
    sees (not a debug line), and the message behind it goes out."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    t0 = time.time()
    writer.message(None, sender=ALICE, chat=chat, guid="EMPTY-1")
    writer.message("behind the empty one", sender=ALICE, chat=chat)
    assert relay.capture_step(t0).holding
    with capture_logs() as logs:
        relay_all(relay, now=t0 + relay.settings.chat_join_wait + 0.1)
    assert [r.body["text"] for r in backend.messages()] == ["behind the empty one"]
    (warning,) = [e for e in logs if e["event"] == "row_empty_after_wait"]
    assert warning["log_level"] == "warning" and warning["guid"] == "EMPTY-1"


def test_a_late_group_chat_join_is_never_sent_as_a_direct_chat(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The review's reproduction (#19): a group row whose chat join lands after
    ARCHETY_CHAT_JOIN_WAIT goes out as the group's message, not as a direct chat with its
    sender (whose reply would then go to a 1:1 chat)."""
    group = writer.group_chat("chat42", [ALICE, BOB])
    relay.capture_step(time.time())
    t0 = time.time()
    rowid = writer.message("to the group", sender=BOB, chat=group, join_chat=False)
    wait = relay.settings.chat_join_wait
    assert relay.capture_step(t0).holding
    assert relay.capture_step(t0 + wait + 0.1).holding  # BOB is only in a group: wait longer
    writer.conn.execute("BEGIN")
    writer.join(rowid, group)
    writer.conn.execute("COMMIT")
    relay_all(relay, now=t0 + 2 * wait)
    assert [(r.body["chat_guid"], r.body["mode"]) for r in backend.messages()] == [
        ("iMessage;+;chat42", "group")
    ]


def test_a_group_row_whose_join_never_comes_is_passed_with_a_warning(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """If the join never comes, the row is skipped with a warning rather than guessed into a
    direct chat, and the message behind it goes out."""
    group = writer.group_chat("chat42", [ALICE, BOB])
    relay.capture_step(time.time())
    t0 = time.time()
    writer.message("lost join", sender=BOB, chat=group, join_chat=False, guid="ORPHAN-G")
    writer.message("next", sender=BOB, chat=group)
    assert relay.capture_step(t0).holding
    later = t0 + relay.settings.chat_join_wait * GROUP_JOIN_WAIT_FACTOR + 0.1
    with capture_logs() as logs:
        relay_all(relay, now=later)
    assert [(r.body["text"], r.body["mode"]) for r in backend.messages()] == [("next", "group")]
    (warning,) = [e for e in logs if e["event"] == "group_chat_join_missing"]
    assert warning["log_level"] == "warning" and warning["guid"] == "ORPHAN-G"


def test_a_missing_join_uses_the_real_macos_26_chat_instead_of_inventing_one(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Issue #12 point 3: an RCS row without its chat join, on macOS 26 where the direct chat
    is `any;-;<handle>`: it goes to that chat, not to a made-up `RCS;-;<handle>`."""
    writer.chat(f"any;-;{ALICE}", 45, [ALICE], identifier=ALICE)
    relay.capture_step(time.time())
    t0 = time.time()
    rowid = writer.message("over RCS", sender=ALICE, chat=None)
    writer.conn.execute("UPDATE message SET service = 'RCS' WHERE ROWID = ?", (rowid,))
    assert relay.capture_step(t0).holding
    relay_all(relay, now=t0 + relay.settings.chat_join_wait + 0.1)
    assert [(r.body["chat_guid"], r.body["mode"]) for r in backend.messages()] == [
        (f"any;-;{ALICE}", "direct")
    ]


def test_a_sender_in_no_chat_gets_the_guid_form_this_database_writes(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """With no chat for the sender at all, the direct guid is derived in the form this chat.db
    uses: `any;-;` on macOS 26, never a service form Messages would not recognise there."""
    writer.chat(f"any;-;{BOB}", 45, [BOB], identifier=BOB)
    relay.capture_step(time.time())
    t0 = time.time()
    rowid = writer.message("first contact", sender=ALICE, chat=None)
    writer.conn.execute("UPDATE message SET service = 'RCS' WHERE ROWID = ?", (rowid,))
    assert relay.capture_step(t0).holding
    relay_all(relay, now=t0 + relay.settings.chat_join_wait + 0.1)
    assert [r.body["chat_guid"] for r in backend.messages()] == [f"any;-;{ALICE}"]


def _swap_in(writer: MessagesWriter, relay: Relay, replacement: Path) -> None:
    """Put another file in chat.db's place, as a migration or a restore does (new inode)."""
    relay.chatdb.close()
    writer.close()
    for suffix in ("-wal", "-shm"):
        Path(str(writer.path) + suffix).unlink(missing_ok=True)
    os.replace(replacement, writer.path)


def test_chatdb_rewritten_with_the_same_history_keeps_its_cursor(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, settings: Settings
) -> None:
    """The review's reproduction (#12): relay stopped after one message, two more arrive, then
    chat.db is rewritten to a new file with the same rows and identifier (VACUUM INTO and
    rename). The two messages go out; the cursor is kept, not rebased."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message("before", sender=ALICE, chat=chat)
    relay_all(relay)
    writer.message("while stopped 1", sender=ALICE, chat=chat)
    writer.message("while stopped 2", sender=ALICE, chat=chat)
    copy = writer.path.with_name("rewritten.db")
    writer.conn.execute("VACUUM INTO ?", (str(copy),))
    _swap_in(writer, relay, copy)
    with ChatDb(writer.path) as chatdb:  # the relay starts again
        restarted = Relay(settings, chatdb, relay.store)
        result = restarted.capture_step(time.time())
        relay_all(restarted)
        restarted.backend.close()
    assert not result.rebased and result.enqueued == 2
    assert [r.body["text"] for r in backend.messages()] == [
        "before",
        "while stopped 1",
        "while stopped 2",
    ]


def test_a_rebuilt_chatdb_with_new_rows_below_the_old_max_hides_nothing(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """Issue #12 point 9: a really different database (new identifier) whose new rows sit below
    the old MAX(ROWID). Rows dated since the last one seen go out, except those already
    delivered (same guids); older history is not replayed."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    for i in range(5):
        writer.message(f"delivered {i}", sender=ALICE, chat=chat, guid=f"G-{i}")
    relay_all(relay)
    rebuilt = tmp_path / "rebuilt.db"
    with MessagesWriter(rebuilt) as other:
        again = other.direct_chat(ALICE)
        other.message("old history", sender=ALICE, chat=again, sent_at=time.time() - 7200)
        for i in range(3, 5):  # the newest delivered ones, carried over with their guids
            other.message(f"delivered {i}", sender=ALICE, chat=again, guid=f"G-{i}")
        other.message("arrived during the rebuild", sender=ALICE, chat=again)
    _swap_in(writer, relay, rebuilt)
    result = relay.capture_step(time.time())
    relay_all(relay)
    assert result.rebased
    assert [r.body["text"] for r in backend.messages()][5:] == ["arrived during the rebuild"]


def test_doctor_blames_full_disk_access_only_for_access_errors(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A chat.db that is readable but not a database is not a permissions problem: doctor's fix
    says what chatdb found, not "grant Full Disk Access"; a missing one still names it."""
    broken = tmp_path / "broken" / "chat.db"
    broken.parent.mkdir()
    broken.write_bytes(b"not a database at all" * 300)
    result = run_cli(["doctor"], {**env, "ARCHETY_CHAT_DB": str(broken)}, cwd=tmp_path)
    (line,) = [ln for ln in result.stdout.splitlines() if "chat.db readable" in ln]
    fix = result.stdout.splitlines()[result.stdout.splitlines().index(line) + 1]
    assert line.startswith("✗") and "SQLITE_NOTADB" in line
    assert "Full Disk Access" not in fix and "doctor" in fix
    missing = run_cli(
        ["doctor"], {**env, "ARCHETY_CHAT_DB": str(tmp_path / "no" / "chat.db")}, cwd=tmp_path
    )
    assert "Full Disk Access" in missing.stdout
