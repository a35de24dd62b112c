"""The only code that touches Apple's Messages database, and it only reads.

Rules this module keeps, each learned from another bridge's lost messages or grown WAL:
- Open read-only through a `mode=ro` URI, never `immutable=1` (that reads a stale snapshot).
- Every read is one short explicit transaction whose cursors are read to the end before COMMIT:
  an open read snapshot stops Messages.app from checkpointing, and chat.db-wal grows unbounded.
- A replaced file (restore from backup, a new Mac) is noticed by its inode: an open connection
  would otherwise go on reading the old, unlinked file forever.
- Every query walks an index from the cursor (message ROWID, chat_message_join.message_id, ...),
  so the cost of a read does not grow with the size of the history.
- Apple's TEXT columns are not always valid UTF-8 (an unpaired surrogate from an old SMS import,
  a sender-chosen file name): every TEXT value is decoded leniently, so one bad byte can never
  make every read fail and hold the cursor back forever.
- SQLite's error text quotes column values (message text): it is never put in an error we raise,
  only its error code. Full Disk Access is blamed only for open and permission errors.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ChatDbUnavailable
from . import typedstream, voice
from .rows import (
    AttachmentState,
    ChatRef,
    RawMessage,
    WatchedRow,
    apple_date,
    attachment,
    unix_time,
)

FULL_DISK_ACCESS_HINT = (
    "On a Mac this is almost always missing Full Disk Access: open System Settings > "
    "Privacy & Security > Full Disk Access and add the Python interpreter the relay runs "
    "(`archety-relay doctor` prints its exact path)."
)
BUSY_HINT = (
    "Messages.app held a lock on chat.db for longer than the relay waits; it is retried "
    "and nothing is lost. If it persists, restart Messages.app."
)
OTHER_HINT = (
    "The relay retries and the cursor does not move, so nothing is lost. If this persists, "
    "run `archety-relay doctor`."
)
# Errors that mean "this process may not read chat.db" (no Full Disk Access), not a busy database.
_ACCESS_CODES = frozenset({"SQLITE_CANTOPEN", "SQLITE_AUTH", "SQLITE_PERM"})
_ACCESS_WORDS = ("unable to open", "authorization denied", "not authorized")
_BUSY_CODES = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})

# Columns beyond the first ten, each replaced by NULL where this macOS lacks it (the emoji
# column arrived in macOS 15, the edit columns in 13): an older chat.db still reads.
_EXTRA_COLUMNS = (
    "associated_message_guid",
    "associated_message_emoji",
    "group_action_type",
    "group_title",
    "thread_originator_guid",
    "thread_originator_part",
    "balloon_bundle_id",
    "is_read",
    # The change watch's columns (see _WATCH_COLUMNS), so capture fingerprints the row it read.
    "date_edited",
    "is_empty",
    "message_summary_info",
    "date_read",
    "is_audio_message",
    "expressive_send_style_id",
    "payload_data",
    "share_status",
    "share_direction",
)
# An app's payload is read only where it is worth reading (a poll, a vote, another app's
# balloon), never for link previews: those carry kilobytes of page metadata per row.
_COLUMN_EXPRESSIONS = {
    "payload_data": "CASE WHEN (m.balloon_bundle_id IS NOT NULL AND m.balloon_bundle_id != "
    "'com.apple.messages.URLBalloonProvider') OR m.associated_message_type = 4000 "
    "THEN m.payload_data END",
}
_MESSAGES_SQL = """
SELECT m.ROWID, m.guid, m.text, m.attributedBody, h.id, m.service, m.is_from_me, m.item_type,
       m.associated_message_type, m.date, oh.id, {extra}
FROM message AS m LEFT JOIN handle AS h ON h.ROWID = m.handle_id
LEFT JOIN handle AS oh ON oh.ROWID = m.other_handle AND m.item_type = 1
WHERE {where}
"""
_AFTER = "m.ROWID > ? ORDER BY m.ROWID LIMIT ?"
_BY_ROWID = "m.ROWID IN ({ids})"
# The in-place change watch: cheap columns only, by message_idx_date (or by ROWID for the
# persona's unread messages older than the window). No blob but the small summary plist.
_WATCH_COLUMNS = (
    "date_edited",
    "is_empty",
    "message_summary_info",
    "is_read",
    "date_read",
)
_WATCH_SQL = """
SELECT m.ROWID, m.guid, m.date, m.is_from_me, {extra} FROM message AS m
WHERE m.date >= ? AND m.item_type = 0 AND m.associated_message_type IN (0, 2, 3)
"""
_WATCH_ROWIDS_SQL = """
SELECT m.ROWID, m.guid, m.date, m.is_from_me, {extra} FROM message AS m WHERE m.ROWID IN ({ids})
"""
_CHATS_SQL = """
SELECT j.message_id, c.ROWID, c.guid, c.style, c.chat_identifier,
       (SELECT MIN(k.message_id) FROM chat_message_join AS k WHERE k.chat_id = c.ROWID)
FROM chat_message_join AS j JOIN chat AS c ON c.ROWID = j.chat_id
WHERE j.message_id IN ({ids})
"""
_PARTICIPANTS_SQL = """
SELECT chj.chat_id, h.id FROM chat_handle_join AS chj JOIN handle AS h ON h.ROWID = chj.handle_id
WHERE chj.chat_id IN ({ids}) ORDER BY chj.chat_id, h.ROWID
"""
_ATTACHMENTS_SQL = """
SELECT j.message_id, a.guid, a.filename, a.mime_type, a.transfer_name, a.total_bytes, a.uti,
       {extra}
FROM message_attachment_join AS j JOIN attachment AS a ON a.ROWID = j.attachment_id
WHERE j.message_id IN ({ids}) ORDER BY j.message_id, a.ROWID
"""
# Attachment columns beyond the first six, NULL where this macOS lacks them. user_info is read
# for audio only: a voice note's transcript may be in it (see voice).
_ATTACHMENT_EXTRA = ("is_sticker", "user_info")
_ATTACHMENT_EXPRESSIONS = {
    "user_info": "CASE WHEN a.uti = 'com.apple.coreaudio-format' OR a.mime_type LIKE 'audio/%' "
    "THEN a.user_info END",
}


@dataclass(frozen=True)
class Ahead:
    """What a chat held of a late row before it arrived (see lateness)."""

    newer_incoming: bool
    twin: bool


@dataclass(frozen=True)
class SentRow:
    """An outgoing message Messages recorded: `error` is message.error (0 when it went out)."""

    rowid: int
    error: int
    guid: str | None = None  # Apple's message guid: what reactions and replies will name


# The chats a handle is in, for a row whose chat join never came: by chat_identifier (a direct
# chat names its peer there) and by membership; both walk an index (chat_idx_chat_identifier,
# handle_idx_id, chat_handle_join_idx_handle_id).
_CHATS_OF_HANDLE_SQL = """
SELECT c.ROWID, c.guid, c.style, c.chat_identifier,
       (SELECT MIN(k.message_id) FROM chat_message_join AS k WHERE k.chat_id = c.ROWID)
FROM chat AS c WHERE c.ROWID IN (
    SELECT ROWID FROM chat WHERE chat_identifier = ?1
    UNION
    SELECT chj.chat_id FROM handle AS h JOIN chat_handle_join AS chj ON chj.handle_id = h.ROWID
    WHERE h.id = ?1
)
"""
# macOS 26 writes chat guids as `any;-;<handle>`; a database that has one uses that form.
_ANY_FORM_SQL = "SELECT EXISTS (SELECT 1 FROM chat WHERE guid LIKE 'any;%')"


def _placeholders(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def lenient_text(raw: bytes) -> str:
    """How every TEXT value of chat.db is decoded: bytes that are not UTF-8 become U+FFFD."""
    return raw.decode("utf-8", errors="replace")


def unavailable(action: str, exc: sqlite3.Error) -> ChatDbUnavailable:
    """Translate a sqlite3 error into the relay's, keeping SQLite's code but never its text.

    The text is read only to classify the error (Python 3.10 has no error codes on exceptions);
    it may quote a column value, so it goes into no message, hint or log line.
    """
    code = getattr(exc, "sqlite_errorname", None)
    words = str(exc).lower()
    if code in _ACCESS_CODES or any(w in words for w in _ACCESS_WORDS):
        hint = FULL_DISK_ACCESS_HINT
    elif code in _BUSY_CODES or "locked" in words or "busy" in words:
        hint = BUSY_HINT
    else:
        hint = OTHER_HINT
    kind = code or type(exc).__name__
    return ChatDbUnavailable(f"{action} failed ({kind})", hint=hint)


# The persona's sends of a recent window (see capture.outcomes): reactions (associated 1000+)
# and group events (item_type) have no receipt worth reporting.
_SENT_SQL = (
    "SELECT ROWID, guid, date, is_delivered, date_delivered, error FROM message "
    "WHERE date >= ? AND is_from_me = 1 AND COALESCE(item_type, 0) = 0 "
    "AND COALESCE(associated_message_type, 0) < 1000"
)


class OwnSend(NamedTuple):
    """One of the persona's sent rows: what a delivery receipt or a late failure changes."""

    rowid: int
    guid: str
    date: int
    is_delivered: int
    date_delivered: int
    error: int

    @property
    def delivered(self) -> bool:
        return bool(self.is_delivered or self.date_delivered)


class ChatDb:
    """A read-only view of chat.db that reopens itself when the file is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._data_version: int | None = None
        # Counts (re)connections, so callers can tell when to re-read the fingerprint.
        self.generation = 0
        # The capture and dispatch threads share this connection; one read at a time on it.
        self._lock = threading.RLock()
        self._columns: frozenset[str] = frozenset()
        self._attachment_columns: frozenset[str] = frozenset()

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._inode == self._current_inode():
            return self._conn
        self.close()
        if not self.path.exists():
            raise ChatDbUnavailable(
                f"chat.db not found at {self.path}",
                hint="Open Messages.app once and sign in to iMessage, or set ARCHETY_CHAT_DB. "
                + FULL_DISK_ACCESS_HINT,
            )
        uri = "file:" + urllib.parse.quote(str(self.path)) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.text_factory = lenient_text
            conn.execute("PRAGMA query_only = 1")
            conn.execute("SELECT 1 FROM message LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise unavailable(f"opening chat.db at {self.path}", exc) from exc
        self._columns = frozenset(
            r[1] for r in conn.execute("PRAGMA table_info(message)").fetchall()
        )
        self._attachment_columns = frozenset(
            r[1] for r in conn.execute("PRAGMA table_info(attachment)").fetchall()
        )
        self._conn = conn
        self._inode = self._current_inode()
        self.generation += 1
        self._data_version = None
        return conn

    def _current_inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One short read transaction; every cursor inside must be fully fetched."""
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.close()
                raise unavailable("reading chat.db", exc) from exc

    # -- reads ------------------------------------------------------------------------------
    def changed(self) -> bool:
        """True when another connection committed (or the file was replaced) since last asked.

        `PRAGMA data_version` costs microseconds, so the periodic safety check is nearly free.
        """
        with self._lock:
            conn = self._connect()
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as exc:
                self.close()
                raise unavailable("reading chat.db", exc) from exc
            changed = version != self._data_version
            self._data_version = version
            return changed

    def fingerprint(self) -> str:
        """Identifies this database instance: its inode and Messages' own unique identifier."""
        with self._snapshot() as conn:
            try:
                rows = conn.execute(
                    "SELECT value FROM _SqliteDatabaseProperties WHERE key = '_UniqueIdentifier'"
                ).fetchall()
            except sqlite3.OperationalError:
                rows = []
        unique = rows[0][0] if rows and rows[0][0] else "-"
        return f"{self._inode}:{unique}"

    def current_generation(self) -> int:
        """`generation` after (re)opening chat.db if it was replaced or closed since last used."""
        with self._lock:
            self._connect()
            return self.generation

    def row_at(self, rowid: int) -> tuple[str | None, int | None] | None:
        """(guid, date) of the message row with this ROWID, or None when there is none."""
        with self._snapshot() as conn:
            row = conn.execute(
                "SELECT guid, date FROM message WHERE ROWID = ?", (rowid,)
            ).fetchone()
        return (_str(row[0]), _int(row[1])) if row else None

    def max_rowid(self) -> int:
        with self._snapshot() as conn:
            value = conn.execute("SELECT MAX(ROWID) FROM message").fetchone()[0]
        return int(value or 0)

    def first_rowid_since(self, apple_date: int) -> int | None:
        """The lowest ROWID of a message dated at or after `apple_date` (via message_idx_date)."""
        with self._snapshot() as conn:
            value = conn.execute(
                "SELECT MIN(ROWID) FROM message WHERE date >= ?", (apple_date,)
            ).fetchone()[0]
        return int(value) if value is not None else None

    def was_sent(self, chat_guid: str, text: str, since_unix: float) -> bool:
        """Whether Messages recorded an outgoing message with this text in this chat lately."""
        return self.find_sent([chat_guid], "", text, since_unix) is not None

    def chat_guid_for(self, identifier: str) -> str | None:
        """The guid of the chat the previous edge client called `identifier`
        (chat.chat_identifier, by its index); of several (one person on iMessage and on SMS),
        the one with the latest message."""
        with self._snapshot() as conn:
            row = conn.execute(
                "SELECT c.guid FROM chat AS c WHERE c.chat_identifier = ? ORDER BY "
                "(SELECT MAX(j.message_id) FROM chat_message_join AS j WHERE j.chat_id = c.ROWID) "
                "DESC, c.ROWID DESC LIMIT 1",
                (identifier,),
            ).fetchone()
        return _str(row[0]) if row else None

    def chat_service_name(self, chat_guid: str) -> str | None:
        """`chat.service_name` (iMessage, SMS, RCS) of a chat: macOS 26 guids say only `any`."""
        with self._snapshot() as conn:
            row = conn.execute(
                "SELECT service_name FROM chat WHERE guid = ? LIMIT 1", (chat_guid,)
            ).fetchone()
        return row[0] if row and isinstance(row[0], str) else None

    def find_sent(
        self,
        chat_guids: Sequence[str],
        handle: str,
        text: str,
        since_unix: float,
        after_rowid: int = 0,
        exclude: Collection[str] = (),
        file_path: str | None = None,
    ) -> SentRow | None:
        """The newest outgoing row with this text that Messages joined to one of these chats
        (or, for a direct chat, to the chat with this handle, however its guid is spelled),
        above ROWID `after_rowid` and not one of the guids in `exclude`.

        With `file_path` (a file the persona sent, issue #19) the row must carry an attachment
        that is that file: Messages' `attachment.filename` names it (`~/…` spelled out), or
        its own copy keeps the name (`transfer_name`, or the copy's last part). Its text, U+FFFC,
        is not compared."""
        guids = list(chat_guids)
        found = "m.text, m.attributedBody"
        attachments = ""
        if file_path is not None:
            found = "a.filename, a.transfer_name"
            attachments = (
                "JOIN message_attachment_join AS k ON k.message_id = m.ROWID "
                "JOIN attachment AS a ON a.ROWID = k.attachment_id "
            )
        with self._snapshot() as conn:
            rows = conn.execute(
                f"SELECT m.ROWID, m.error, m.guid, {found} FROM chat AS c "
                "JOIN chat_message_join AS j ON j.chat_id = c.ROWID "
                "JOIN message AS m ON m.ROWID = j.message_id "
                f"{attachments}"
                f"WHERE (c.guid IN ({_placeholders(guids)}) "
                "OR (? != '' AND c.chat_identifier = ? AND c.style = 45)) "
                "AND m.is_from_me = 1 AND m.date >= ? AND m.ROWID > ? "
                "ORDER BY m.ROWID DESC LIMIT 200",
                (*guids, handle, handle, apple_date(since_unix), after_rowid),
            ).fetchall()
        wanted = text.strip()
        for rowid, error, guid, first, second in rows:
            if file_path is not None:
                same = same_file(file_path, _str(first), _str(second))
            else:
                same = _row_text(first, second) == wanted
            if same and _str(guid) not in exclude:
                return SentRow(int(rowid), _int(error) or 0, _str(guid))
        return None

    def attachment_paths(self, message_guid: str) -> list[str]:
        """Where Messages keeps the files of one of its rows (`~` spelled out)."""
        with self._snapshot() as conn:
            rows = conn.execute(
                "SELECT a.filename FROM message AS m "
                "JOIN message_attachment_join AS k ON k.message_id = m.ROWID "
                "JOIN attachment AS a ON a.ROWID = k.attachment_id WHERE m.guid = ?",
                (message_guid,),
            ).fetchall()
        return [os.path.expanduser(r[0]) for r in rows if isinstance(r[0], str)]

    def guid_forms(self) -> dict[str, int]:
        """How this database spells chat guids (`iMessage;-;`, `any;+;` …), with counts: macOS 26
        writes `any`, which decides how sends must find a chat."""
        with self._snapshot() as conn:
            rows = conn.execute(
                "SELECT substr(guid, 1, instr(guid, ';') + 2), COUNT(*) FROM chat "
                "WHERE instr(guid, ';') > 0 GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
        return {str(form): int(count) for form, count in rows}

    def chats_of_handle(self, handle: str) -> tuple[list[ChatRef], bool]:
        """The chats this handle is in, and whether this database writes `any;` chat guids."""
        with self._snapshot() as conn:
            chats = conn.execute(_CHATS_OF_HANDLE_SQL, (handle,)).fetchall()
            chat_ids = [c[0] for c in chats]
            people = (
                conn.execute(
                    _PARTICIPANTS_SQL.format(ids=_placeholders(chat_ids)), chat_ids
                ).fetchall()
                if chat_ids
                else []
            )
            any_form = bool(conn.execute(_ANY_FORM_SQL).fetchone()[0])
        participants = _participants(people)
        refs = [
            ChatRef(
                rowid,
                _str(guid),
                _int(style),
                _str(ident),
                participants.get(rowid, ()),
                _int(first),
            )
            for rowid, guid, style, ident, first in chats
        ]
        return refs, any_form

    def read_after(self, cursor: int, limit: int) -> list[RawMessage]:
        """Up to `limit` message rows with ROWID > cursor, in ROWID order, with their joins."""
        with self._snapshot() as conn:
            rows = conn.execute(self._messages_sql(_AFTER), (cursor, limit)).fetchall()
            return self._with_joins(conn, rows)

    def read_rowids(self, rowids: Sequence[int]) -> list[RawMessage]:
        """These message rows as they are now, with their joins (ROWID order)."""
        if not rowids:
            return []
        with self._snapshot() as conn:
            sql = self._messages_sql(_BY_ROWID.format(ids=_placeholders(rowids)))
            rows = conn.execute(sql + " ORDER BY m.ROWID", list(rowids)).fetchall()
            return self._with_joins(conn, rows)

    def read_guid(self, guid: str) -> RawMessage | None:
        """One message by its guid (the unique index), with its joins: a reply's original."""
        with self._snapshot() as conn:
            rows = conn.execute(self._messages_sql("m.guid = ?"), (guid,)).fetchall()
            found = self._with_joins(conn, rows)
        return found[0] if found else None

    def chat_ahead(self, chat_rowid: int, apple_date: int, rowid: int, text: str) -> Ahead:
        """What this chat already held, before row `rowid` arrived, of a row dated `apple_date`:
        an incoming message dated at or after it, and a twin (an incoming message of the same
        sender, date and text). Through the (chat_id, message_date, message_id) index, each
        candidate's message row by its ROWID: only newer rows of this one chat are read."""
        with self._snapshot() as conn:
            newer = conn.execute(
                "SELECT 1 FROM chat_message_join AS j JOIN message AS m ON m.ROWID = j.message_id "
                "WHERE j.chat_id = ? AND j.message_date >= ? AND j.message_id < ? "
                "AND m.is_from_me = 0 AND m.item_type = 0 "
                "AND m.associated_message_type IN (0, 2, 3) LIMIT 1",
                (chat_rowid, apple_date, rowid),
            ).fetchone()
            same = conn.execute(
                "SELECT m.text, m.attributedBody FROM chat_message_join AS j "
                "JOIN message AS m ON m.ROWID = j.message_id "
                "WHERE j.chat_id = ? AND j.message_date = ? AND j.message_id < ? "
                "AND m.is_from_me = 0 "
                "AND m.handle_id = (SELECT handle_id FROM message WHERE ROWID = ?) LIMIT 20",
                (chat_rowid, apple_date, rowid, rowid),
            ).fetchall()
        wanted = text.strip()
        return Ahead(newer is not None, any(_row_text(t, b) == wanted for t, b in same))

    def texts_before(self, chat_rowid: int, since_apple_date: int, rowid: int) -> list[str]:
        """Texts of this chat's rows dated since `since_apple_date` that came before `rowid`."""
        with self._snapshot() as conn:
            found = conn.execute(
                "SELECT m.text, m.attributedBody FROM chat_message_join AS j "
                "JOIN message AS m ON m.ROWID = j.message_id WHERE j.chat_id = ? "
                "AND j.message_date >= ? AND j.message_id < ? ORDER BY j.message_id DESC LIMIT 20",
                (chat_rowid, since_apple_date, rowid),
            ).fetchall()
        return [_row_text(t, b) for t, b in found]

    def watch_window(self, since_apple_date: int, rowids: Sequence[int]) -> list[WatchedRow]:
        """Ordinary messages dated at or after `since_apple_date` (message_idx_date), plus these
        rows: the cheap columns an edit, unsend or read receipt changes. Cost follows the
        window's size, not chat.db's."""
        extra = self._extra(_WATCH_COLUMNS)
        with self._snapshot() as conn:
            found = conn.execute(_WATCH_SQL.format(extra=extra), (since_apple_date,)).fetchall()
            if rowids:
                ids = list(rowids)
                sql = _WATCH_ROWIDS_SQL.format(extra=extra, ids=_placeholders(ids))
                found += conn.execute(sql, ids).fetchall()
        seen: dict[int, WatchedRow] = {}
        for r in found:
            if isinstance(r[1], str):
                seen[r[0]] = WatchedRow(*r)
        return [seen[k] for k in sorted(seen)]

    def _extra(self, names: Sequence[str]) -> str:
        return ", ".join(
            _COLUMN_EXPRESSIONS.get(n, f"m.{n}") if n in self._columns else "NULL" for n in names
        )

    def _attachment_extra(self) -> str:
        return ", ".join(
            _ATTACHMENT_EXPRESSIONS.get(n, f"a.{n}") if n in self._attachment_columns else "NULL"
            for n in _ATTACHMENT_EXTRA
        )

    def _messages_sql(self, where: str) -> str:
        return _MESSAGES_SQL.format(extra=self._extra(_EXTRA_COLUMNS), where=where)

    def _with_joins(self, conn: sqlite3.Connection, rows: list[tuple]) -> list[RawMessage]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        chats = conn.execute(_CHATS_SQL.format(ids=_placeholders(ids)), ids).fetchall()
        chat_ids = sorted({c[1] for c in chats})
        people = (
            conn.execute(_PARTICIPANTS_SQL.format(ids=_placeholders(chat_ids)), chat_ids).fetchall()
            if chat_ids
            else []
        )
        files = conn.execute(
            _ATTACHMENTS_SQL.format(ids=_placeholders(ids), extra=self._attachment_extra()), ids
        ).fetchall()
        return _assemble(rows, chats, people, files)

    def voice_transcripts(self, message_guid: str) -> tuple[str | None, dict[str, str]]:
        """Apple's transcript of a voice note as it is now: the one in the message's
        attributedBody, and those in its attachments' user_info by attachment guid (see voice).
        Two lookups by unique index; nothing else of the row is read."""
        with self._snapshot() as conn:
            body = conn.execute(
                "SELECT attributedBody FROM message WHERE guid = ?", (message_guid,)
            ).fetchone()
            files = (
                conn.execute(
                    "SELECT a.guid, a.user_info FROM message AS m "
                    "JOIN message_attachment_join AS j ON j.message_id = m.ROWID "
                    "JOIN attachment AS a ON a.ROWID = j.attachment_id WHERE m.guid = ?",
                    (message_guid,),
                ).fetchall()
                if "user_info" in self._attachment_columns
                else []
            )
        blob = body[0] if body and isinstance(body[0], bytes) else None
        by_file = {}
        for guid, info in files:
            text = voice.transcript_in_user_info(info if isinstance(info, bytes) else None)
            if text and (key := _str(guid)):
                by_file[key] = text
        return voice.transcript_in_body(blob), by_file

    def attachment_states(self, guids: Sequence[str]) -> dict[str, AttachmentState]:
        """Whether these attachments' files are there yet: a lookup by the unique `guid`
        index for just the rows a message waits for, never a scan of the attachment table."""
        if not guids:
            return {}
        with self._snapshot() as conn:
            rows = conn.execute(
                "SELECT guid, filename, transfer_state, ck_sync_state, total_bytes "
                f"FROM attachment WHERE guid IN ({_placeholders(guids)})",
                list(guids),
            ).fetchall()
        return {
            guid: AttachmentState(
                guid, os.path.expanduser(filename) if filename else None, state, ck, size
            )
            for guid, filename, state, ck, size in rows
        }

    def sent_since(self, since_apple_date: int) -> list[OwnSend]:
        """The persona's ordinary messages dated at or after `since_apple_date`, with what a
        receipt or a late failure changes. A range on `message_idx_date`: the cost follows the
        rows in the window, not chat.db's size."""
        with self._snapshot() as conn:
            rows = conn.execute(_SENT_SQL, (since_apple_date,)).fetchall()
        return [
            OwnSend(
                int(r[0]), r[1], _int(r[2]) or 0, _int(r[3]) or 0, _int(r[4]) or 0, _int(r[5]) or 0
            )
            for r in rows
            if isinstance(r[1], str)
        ]

    def chat_guids_of(self, rowids: Sequence[int]) -> dict[int, str]:
        """Each message's chat (its oldest joined chat, as `events.chat_guid_of` picks)."""
        if not rowids:
            return {}
        ids = list(rowids)
        with self._snapshot() as conn:
            rows = conn.execute(
                "SELECT j.message_id, c.guid FROM chat_message_join AS j "
                "JOIN chat AS c ON c.ROWID = j.chat_id "
                f"WHERE j.message_id IN ({_placeholders(ids)}) ORDER BY c.ROWID DESC",
                ids,
            ).fetchall()
        return {int(m): g for m, g in rows if isinstance(g, str)}

    def last_inbound_at(self) -> float | None:
        """Unix time of the newest incoming message, or None: walks `message_idx_date` from the
        newest row down to the first one not from the persona."""
        with self._snapshot() as conn:
            row = conn.execute(
                "SELECT date FROM message WHERE is_from_me = 0 AND date > 0 "
                "ORDER BY date DESC LIMIT 1"
            ).fetchone()
        return unix_time(row[0]) if row and isinstance(row[0], int) else None

    def __enter__(self) -> ChatDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def same_file(path: str, filename: str | None, transfer_name: str | None) -> bool:
    """Whether an attachment row is the file at `path`: the same path, or a copy Messages made
    under the same name (it keeps the name it was given)."""
    name = os.path.basename(path)
    if filename and os.path.expanduser(filename) == path:
        return True
    return name in (transfer_name, os.path.basename(filename or ""))


def _str(value: object) -> str | None:
    """A column meant to hold text, whatever SQLite's type for it is in this row.

    SQLite keeps a value's own type per row: a BLOB in a TEXT column comes back as bytes, and an
    integer may sit where text is expected. Neither may reach the JSON body or stop the read.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return lenient_text(value)
    return str(value)


def _row_text(text: object, body: object) -> str:
    """The stripped text of a row read for send checks, whatever type its columns hold."""
    found = _str(text) or typedstream.decode(body if isinstance(body, bytes) else None)
    return (found or "").strip()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _participants(people: list[tuple]) -> dict[int, tuple[str, ...]]:
    found: dict[int, list[str]] = {}
    for chat_id, handle in people:
        if handle := _str(handle):
            found.setdefault(chat_id, []).append(handle)
    return {chat_id: tuple(handles) for chat_id, handles in found.items()}


def _watched(
    rowid: int, guid: Any, date: Any, is_from_me: Any, item_type: Any, assoc: Any, extra: list[Any]
) -> WatchedRow | None:
    """The row as the change watch reads it (`watch_window`): the same raw values, so capture's
    fingerprint and the watch's agree, damaged columns included. None for rows the watch never
    looks at (its WHERE: ordinary items, associated type 0/2/3, a text guid)."""
    if not isinstance(guid, str) or item_type != 0 or assoc not in (0, 2, 3):
        return None
    date_edited, is_empty, summary, date_read = extra[8:12]
    return WatchedRow(
        rowid, guid, date, is_from_me, date_edited, is_empty, summary, extra[7], date_read
    )


def _assemble(
    rows: list[tuple], chats: list[tuple], people: list[tuple], files: list[tuple]
) -> list[RawMessage]:
    participants = _participants(people)
    chats_of: dict[int, list[ChatRef]] = {}
    for message_id, chat_id, guid, style, identifier, first in chats:
        ref = ChatRef(
            chat_id,
            _str(guid),
            _int(style),
            _str(identifier),
            participants.get(chat_id, ()),
            _int(first),
        )
        chats_of.setdefault(message_id, []).append(ref)
    files_of: dict[int, list] = {}
    for message_id, guid, filename, mime, name, size, uti, sticker, info in files:
        if guid := _str(guid):
            files_of.setdefault(message_id, []).append(
                attachment(
                    guid,
                    _str(filename),
                    _str(mime),
                    _str(name),
                    _int(size),
                    _str(uti),
                    _int(sticker),
                    info if isinstance(info, bytes) else None,
                )
            )
    return [
        RawMessage(
            rowid=rowid,
            guid=_str(guid),
            text=_str(text),
            attributed_body=body if isinstance(body, bytes) else None,
            sender=_str(sender),
            service=_str(service),
            is_from_me=_int(is_from_me),
            item_type=_int(item_type),
            associated_message_type=_int(assoc),
            date=_int(date),
            chats=tuple(chats_of.get(rowid, ())),
            attachments=tuple(files_of.get(rowid, ())),
            other_handle=_str(other),
            associated_message_guid=_str(extra[0]),
            associated_message_emoji=_str(extra[1]),
            group_action_type=_int(extra[2]),
            group_title=_str(extra[3]),
            thread_originator_guid=_str(extra[4]),
            thread_originator_part=_str(extra[5]),
            balloon_bundle_id=_str(extra[6]),
            is_read=_int(extra[7]),
            watch=_watched(rowid, guid, date, is_from_me, item_type, assoc, extra),
            is_audio_message=_int(extra[12]),
            expressive_send_style_id=_str(extra[13]),
            payload_data=extra[14] if isinstance(extra[14], bytes) else None,
            share_status=_int(extra[15]),
            share_direction=_int(extra[16]),
        )
        for rowid, guid, text, body, sender, service, is_from_me, item_type, assoc, date, other, *extra in rows
    ]
