"""Pictures on their way to `POST /photo/upload`, and message bodies frozen once settled.

A picture's `photo_id` is committed the moment the backend accepts it, before anything else
happens, so a kill -9 between the upload and its message never uploads it again. A message's
settled body (its attachments' outcomes filled in) is stored once and posted byte for byte on
every later attempt. Pictures still downloading when their message went are `pending` until
they upload or their window closes; each outcome is stored with the event that reports it.

A conversion is marked as started, committed, before the decoder runs, and the mark is removed
when it ends: a mark still there at the next start means a process died converting that
picture (a native crash in libheif or a Pillow decoder, the kernel's out-of-memory kill).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .db import Transactional
from .outgoing import insert_event

# Finished upload records are kept this long (upload_retry, diagnosis), then pruned.
UPLOAD_HISTORY_SECONDS = 30 * 86400

SCHEMA = """
CREATE TABLE IF NOT EXISTS attachment_uploads (
    attachment_guid TEXT PRIMARY KEY,
    message_guid TEXT NOT NULL,
    is_photo INTEGER NOT NULL,
    status TEXT NOT NULL,
    photo_id TEXT,
    skip_reason TEXT,
    path TEXT,
    fields TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL NOT NULL DEFAULT 0,
    pending_until REAL,
    command_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attachment_uploads_status ON attachment_uploads (status, next_try_at);
CREATE INDEX IF NOT EXISTS attachment_uploads_message ON attachment_uploads (message_guid);
CREATE TABLE IF NOT EXISTS conversions (
    attachment_guid TEXT PRIMARY KEY,
    unfinished INTEGER NOT NULL,
    started_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settled_bodies (
    message_guid TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    settled_at REAL NOT NULL
) WITHOUT ROWID;
"""

# A window after which a picture nobody could find is reported unavailable (upload_retry).
REQUEST_WINDOW_SECONDS = 24 * 3600.0

_COLUMNS = (
    "attachment_guid, message_guid, is_photo, status, photo_id, skip_reason, path, fields, "
    "attempts, next_try_at, pending_until, command_id"
)


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables; add columns that state files made by earlier versions lack."""
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(attachment_uploads)")}
    if "command_id" not in columns:
        db.execute("ALTER TABLE attachment_uploads ADD COLUMN command_id TEXT")


def request_upload(
    db: sqlite3.Connection,
    attachment_guid: str,
    chat_guid: str | None,
    command_id: str,
    now: float,
) -> None:
    """upload_retry: make the picture pending again, due now, answering to `command_id`.
    A picture never seen before gets a record with what the command said about it."""
    updated = db.execute(
        "UPDATE attachment_uploads SET status = 'pending', photo_id = NULL, skip_reason = NULL, "
        "attempts = 0, next_try_at = ?, pending_until = ?, command_id = ?, updated_at = ? "
        "WHERE attachment_guid = ?",
        (now, now + REQUEST_WINDOW_SECONDS, command_id, now, attachment_guid),
    ).rowcount
    if not updated:
        fields = {"attachment_guid": attachment_guid}
        if chat_guid:
            fields["chat_guid"] = chat_guid
        record = UploadRecord(
            attachment_guid,
            "",
            True,
            "pending",
            None,
            None,
            None,
            fields,
            next_try_at=now,
            pending_until=now + REQUEST_WINDOW_SECONDS,
            command_id=command_id,
        )
        _upsert(db, record, now)


@dataclass(frozen=True)
class UploadRecord:
    attachment_guid: str
    message_guid: str
    is_photo: bool
    status: str  # waiting | uploaded | pending | skipped
    photo_id: str | None
    skip_reason: str | None
    path: str | None
    fields: dict[str, str]  # the upload's text parts, kept for uploads after the message went
    attempts: int = 0
    next_try_at: float = 0.0  # wall clock
    pending_until: float | None = None  # wall clock: a pending picture is given up after this
    command_id: str | None = None  # the upload_retry this attempt answers, for its event

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "is_photo": self.is_photo,
            "photo_id": self.photo_id,
            "skip_reason": self.skip_reason,
        }


def _record(row: tuple[Any, ...]) -> UploadRecord:
    return UploadRecord(
        attachment_guid=row[0],
        message_guid=row[1],
        is_photo=bool(row[2]),
        status=row[3],
        photo_id=row[4],
        skip_reason=row[5],
        path=row[6],
        fields=json.loads(row[7]),
        attempts=row[8],
        next_try_at=row[9],
        pending_until=row[10],
        command_id=row[11],
    )


def _upsert(db: sqlite3.Connection, record: UploadRecord, now: float) -> None:
    db.execute(
        f"INSERT INTO attachment_uploads ({_COLUMNS}, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (attachment_guid) DO "
        "UPDATE SET status = excluded.status, photo_id = excluded.photo_id, "
        "skip_reason = excluded.skip_reason, path = excluded.path, fields = excluded.fields, "
        "attempts = excluded.attempts, next_try_at = excluded.next_try_at, "
        "pending_until = excluded.pending_until, command_id = excluded.command_id, "
        "updated_at = excluded.updated_at",
        (
            record.attachment_guid,
            record.message_guid,
            int(record.is_photo),
            record.status,
            record.photo_id,
            record.skip_reason,
            record.path,
            json.dumps(record.fields, ensure_ascii=False),
            record.attempts,
            record.next_try_at,
            record.pending_until,
            record.command_id,
            now,
            now,
        ),
    )


class UploadQueries(Transactional):
    def upload_records(self, guids: Iterable[str]) -> dict[str, UploadRecord]:
        found: dict[str, UploadRecord] = {}
        with self._tx() as db:
            for guid in guids:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM attachment_uploads WHERE attachment_guid = ?", (guid,)
                ).fetchone()
                if row:
                    found[guid] = _record(row)
        return found

    def save_upload(self, record: UploadRecord, now: float) -> None:
        """Store what became of one picture (a photo_id the instant it is known)."""
        with self._tx() as db:
            _upsert(db, record, now)

    def settled_body(self, message_guid: str) -> bytes | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT body FROM settled_bodies WHERE message_guid = ?", (message_guid,)
            ).fetchone()
        return bytes(row[0]) if row else None

    def settle(
        self, message_guid: str, body: bytes, records: Sequence[UploadRecord], now: float
    ) -> None:
        """Freeze a message's body together with its pictures' final-for-now records."""
        with self._tx() as db:
            for record in records:
                _upsert(db, record, now)
            db.execute(
                "INSERT OR IGNORE INTO settled_bodies (message_guid, body, settled_at) "
                "VALUES (?, ?, ?)",
                (message_guid, body, now),
            )

    def pending_uploads(self, now: float, limit: int = 50) -> list[UploadRecord]:
        """Pictures posted as pending whose next look is due, oldest first."""
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM attachment_uploads WHERE status = 'pending' "
                "AND next_try_at <= ? ORDER BY next_try_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_record(r) for r in rows]

    def next_pending_at(self) -> float | None:
        with self._tx() as db:
            value = db.execute(
                "SELECT MIN(next_try_at) FROM attachment_uploads WHERE status = 'pending'"
            ).fetchone()[0]
        return float(value) if value is not None else None

    def begin_conversion(self, attachment_guid: str, now: float) -> int:
        """Mark a conversion of this picture as started (committed before the decoder runs).
        Returns how many earlier conversions of it started and never ended."""
        with self._tx() as db:
            row = db.execute(
                "SELECT unfinished FROM conversions WHERE attachment_guid = ?", (attachment_guid,)
            ).fetchone()
            earlier = int(row[0]) if row else 0
            db.execute(
                "INSERT INTO conversions (attachment_guid, unfinished, started_at) "
                "VALUES (?, ?, ?) ON CONFLICT (attachment_guid) DO UPDATE SET "
                "unfinished = excluded.unfinished, started_at = excluded.started_at",
                (attachment_guid, earlier + 1, now),
            )
        return earlier

    def end_conversion(self, attachment_guid: str) -> None:
        """The conversion came back (whatever its outcome): the picture did not kill us."""
        with self._tx() as db:
            db.execute("DELETE FROM conversions WHERE attachment_guid = ?", (attachment_guid,))

    def finish_upload(
        self, record: UploadRecord, event_type: str, payload: dict[str, Any], now: float
    ) -> str:
        """A pending picture's outcome and the event that reports it, in one transaction."""
        with self._tx() as db:
            _upsert(db, record, now)
            return insert_event(db, event_type, payload, now)

    def prune_uploads(self, now: float) -> int:
        """Drop settled bodies of messages that left the outbox, and old finished records."""
        with self._tx() as db:
            removed = db.execute(
                "DELETE FROM settled_bodies WHERE message_guid NOT IN "
                "(SELECT message_guid FROM outbox) AND message_guid NOT IN "
                "(SELECT message_guid FROM dead_letter)"
            ).rowcount
            removed += db.execute(
                "DELETE FROM attachment_uploads WHERE status IN ('uploaded', 'skipped') "
                "AND updated_at < ?",
                (now - UPLOAD_HISTORY_SECONDS,),
            ).rowcount
            # The marks of pictures given up as decoder_crashed stay this long, so an
            # upload_retry of one does not bring the process down again.
            removed += db.execute(
                "DELETE FROM conversions WHERE started_at < ?", (now - UPLOAD_HISTORY_SECONDS,)
            ).rowcount
        return removed
