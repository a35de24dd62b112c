"""The outbox: the cursor, queued messages, dead letters and the facts `status` shows.

Enqueueing a batch and moving the cursor past it are one transaction: a kill -9 at any instant
leaves either both or neither.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..events import ChatEvent
from .db import Transactional
from .outgoing import NewOutgoing, insert_outgoing
from .watch import add_counts, insert_chat_event

# Delivered guids are remembered this long so an iCloud re-insert is not sent again.
DELIVERED_MEMORY_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Cursor:
    rowid: int
    fingerprint: str


@dataclass(frozen=True)
class QueuedItem:
    id: int
    message_guid: str
    source_rowid: int
    body: bytes
    enqueued_at: float
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    message_guid: str
    status: int | None
    response: str | None
    attempts: int
    dead_at: float


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_enqueued_at: float | None
    dead_letters: int


class OutboxQueries(Transactional):
    def cursor(self) -> Cursor | None:
        with self._tx() as db:
            row = db.execute("SELECT rowid, fingerprint FROM cursor WHERE id = 1").fetchone()
        return Cursor(row[0], row[1]) if row else None

    def set_cursor(self, cursor: Cursor, now: float) -> None:
        with self._tx() as db:
            _write_cursor(db, cursor, now)

    def enqueue(
        self,
        items: Iterable[tuple[str, int, bytes]],
        cursor: Cursor | None,
        now: float,
        events: Sequence[ChatEvent] = (),
        counts: Mapping[str, int] | None = None,
    ) -> int:
        """Store (guid, rowid, body) items and move the cursor, atomically. Returns how many were new.

        `cursor=None` (a backfill of rows behind the cursor) leaves the cursor where it is.
        The conversation events and skip counts of the same rows are stored in the same
        transaction, so a crash never reports one twice or loses it.
        """
        added = 0
        with self._tx() as db:
            for guid, rowid, body in items:
                added += db.execute(
                    "INSERT OR IGNORE INTO outbox (message_guid, source_rowid, body, enqueued_at) "
                    "SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM delivered WHERE message_guid = ?) AND NOT EXISTS "
                    "(SELECT 1 FROM dead_letter WHERE message_guid = ?)",
                    (guid, rowid, body, now, guid, guid),
                ).rowcount
            for event in events:
                insert_chat_event(db, event, now)
            add_counts(db, counts or {})
            if cursor is not None:
                _write_cursor(db, cursor, now)
        return added

    # -- outbox -----------------------------------------------------------------------------
    def head(self) -> QueuedItem | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT id, message_guid, source_rowid, body, enqueued_at, attempts "
                "FROM outbox ORDER BY id LIMIT 1"
            ).fetchone()
        return QueuedItem(*row) if row else None

    def record_attempt(self, item_id: int, status: int | None, error: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_status = ?, last_error = ? "
                "WHERE id = ?",
                (status, error, item_id),
            )

    def mark_delivered(
        self, item: QueuedItem, now: float, replies: Sequence[NewOutgoing] = ()
    ) -> None:
        """Remove a delivered message and store the replies it earned, in one transaction:
        a crash can lose neither the reply nor the fact that the message went out."""
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
            db.execute(
                "INSERT OR REPLACE INTO delivered (message_guid, delivered_at) VALUES (?, ?)",
                (item.message_guid, now),
            )
            _write_meta(db, "last_delivery_at", repr(now))
            for reply in replies:
                insert_outgoing(db, reply, now)

    def dead_letter(self, item: QueuedItem, status: int | None, response: str, now: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
            db.execute(
                "INSERT OR REPLACE INTO dead_letter (message_guid, source_rowid, body, enqueued_at,"
                " attempts, status, response, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.message_guid,
                    item.source_rowid,
                    item.body,
                    item.enqueued_at,
                    item.attempts + 1,
                    status,
                    response,
                    now,
                ),
            )

    def dead_letters(self) -> list[DeadLetter]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, message_guid, status, response, attempts, dead_at "
                "FROM dead_letter ORDER BY id"
            ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def retry_dead(self, now: float) -> int:
        """Move every dead letter back to the end of the outbox."""
        with self._tx() as db:
            moved = db.execute(
                "INSERT OR IGNORE INTO outbox (message_guid, source_rowid, body, enqueued_at) "
                "SELECT message_guid, source_rowid, body, ? FROM dead_letter ORDER BY id",
                (now,),
            ).rowcount
            db.execute("DELETE FROM dead_letter")
        return moved

    def purge_dead(self, older_than: float) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM dead_letter WHERE dead_at < ?", (older_than,)).rowcount

    def prune_delivered(self, now: float) -> int:
        with self._tx() as db:
            return db.execute(
                "DELETE FROM delivered WHERE delivered_at < ?", (now - DELIVERED_MEMORY_SECONDS,)
            ).rowcount

    def known(self, guids: Iterable[str]) -> set[str]:
        """Which of these guids are queued, dead-lettered or were delivered recently."""
        found: set[str] = set()
        with self._tx() as db:
            for guid in guids:
                row = db.execute(
                    "SELECT 1 FROM outbox WHERE message_guid = ?1 UNION ALL "
                    "SELECT 1 FROM delivered WHERE message_guid = ?1 UNION ALL "
                    "SELECT 1 FROM dead_letter WHERE message_guid = ?1 LIMIT 1",
                    (guid,),
                ).fetchone()
                if row:
                    found.add(guid)
        return found

    def pending(self, guids: Iterable[str]) -> int:
        """How many of these guids are still waiting in the outbox."""
        with self._tx() as db:
            return sum(
                db.execute("SELECT COUNT(*) FROM outbox WHERE message_guid = ?", (g,)).fetchone()[0]
                for g in guids
            )

    def stats(self) -> QueueStats:
        with self._tx() as db:
            depth, oldest = db.execute("SELECT COUNT(*), MIN(enqueued_at) FROM outbox").fetchone()
            dead = db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        return QueueStats(depth, oldest, dead)

    # -- facts for status -------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        with self._tx() as db:
            return dict(db.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, key: str, value: str | None) -> None:
        with self._tx() as db:
            _write_meta(db, key, value)


def _write_cursor(db: sqlite3.Connection, cursor: Cursor, now: float) -> None:
    db.execute(
        "INSERT INTO cursor (id, rowid, fingerprint, updated_at) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET rowid = excluded.rowid, "
        "fingerprint = excluded.fingerprint, updated_at = excluded.updated_at",
        (cursor.rowid, cursor.fingerprint, now),
    )


def _write_meta(db: sqlite3.Connection, key: str, value: str | None) -> None:
    if value is None:
        db.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
