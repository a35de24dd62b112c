"""The outbox: the cursor, queued messages, dead letters and the facts `status` shows.

Enqueueing a batch and moving the cursor past it are one transaction: a kill -9 at any instant
leaves either both or neither.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..model import ChatEvent, Fingerprint
from .db import Transactional
from .outgoing import NewOutgoing, insert_outgoing
from .watch import add_counts, insert_chat_event, write_fingerprint

# Delivered guids are remembered this long so an iCloud re-insert is not sent again.
DELIVERED_MEMORY_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Cursor:
    rowid: int
    fingerprint: str
    guid: str | None = None  # message.guid of the row at `rowid`, when there is one
    date: int | None = None  # its message.date (Apple time), or the moment the cursor stands for


@dataclass(frozen=True)
class QueuedItem:
    id: int
    message_guid: str
    source_rowid: int
    body: bytes
    enqueued_at: float
    attempts: int
    chat_guid: str = ""

    @property
    def sender(self) -> str:
        """Who sent it (the body's `sender`), "" when the body does not say."""
        return _field_of(self.body, "sender")


_ITEM_COLUMNS = "id, message_guid, source_rowid, body, enqueued_at, attempts, chat_guid"


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
            row = db.execute(
                "SELECT rowid, fingerprint, guid, date FROM cursor WHERE id = 1"
            ).fetchone()
        return Cursor(*row) if row else None

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
        fingerprints: Sequence[Fingerprint] = (),
    ) -> int:
        """Store (guid, rowid, body) items and move the cursor, atomically. Returns how many were new.

        `cursor=None` (a backfill of rows behind the cursor) leaves the cursor where it is.
        The conversation events and skip counts of the same rows are stored in the same
        transaction, so a crash never reports one twice or loses it; so are the rows'
        fingerprints as read, what the change watch compares its first look with.
        """
        added = 0
        with self._tx() as db:
            for guid, rowid, body in items:
                added += db.execute(
                    "INSERT OR IGNORE INTO outbox (message_guid, source_rowid, body, enqueued_at,"
                    " chat_guid) SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM delivered WHERE message_guid = ?) AND NOT EXISTS "
                    "(SELECT 1 FROM dead_letter WHERE message_guid = ?)",
                    (guid, rowid, body, now, _chat_of(body), guid, guid),
                ).rowcount
            for event in events:
                insert_chat_event(db, event, now)
            add_counts(db, counts or {})
            for fp in fingerprints:
                write_fingerprint(db, fp)
            if cursor is not None:
                _write_cursor(db, cursor, now)
        return added

    # -- outbox -----------------------------------------------------------------------------
    def head(self) -> QueuedItem | None:
        """The oldest queued message of all chats."""
        with self._tx() as db:
            row = db.execute(f"SELECT {_ITEM_COLUMNS} FROM outbox ORDER BY id LIMIT 1").fetchone()
        return QueuedItem(*row) if row else None

    def heads(self, limit: int, skip_chats: Collection[str] = ()) -> list[QueuedItem]:
        """Each chat's oldest queued message, oldest first, leaving out `skip_chats` (chats
        with a message in flight or waiting out a backoff). A chat's later messages are never
        returned while an earlier one is queued: that is what keeps each chat in order.

        Chats are visited one by one through the (chat_guid, id) index, so the cost grows with
        the number of chats, not with a backlog of thousands in one busy chat."""
        with self._tx() as db:
            rows = db.execute(
                "WITH RECURSIVE chats(g) AS ("
                " SELECT MIN(chat_guid) FROM outbox"
                " UNION ALL SELECT (SELECT MIN(chat_guid) FROM outbox WHERE chat_guid > g)"
                " FROM chats WHERE g IS NOT NULL)"
                f" SELECT {_ITEM_COLUMNS} FROM outbox WHERE id IN ("
                "  SELECT (SELECT MIN(id) FROM outbox WHERE chat_guid = g) FROM chats"
                "  WHERE g IS NOT NULL AND g NOT IN (SELECT value FROM json_each(?)))"
                " ORDER BY id LIMIT ?",
                (json.dumps(sorted(skip_chats)), limit),
            ).fetchall()
        return [QueuedItem(*r) for r in rows]

    def record_attempt(
        self,
        item_id: int,
        status: int | None,
        error: str | None,
        not_before: float | None = None,
    ) -> None:
        """Count a failed attempt. `not_before` (wall clock) is a time the backend asked us to
        wait for (Retry-After): kept, so a restart does not come back sooner."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_status = ?, last_error = ?, "
                "not_before = ? WHERE id = ?",
                (status, error, not_before, item_id),
            )

    def asked_to_wait(self, wall: float) -> dict[str, float]:
        """Chats whose head the backend asked us not to retry before a time still to come
        (Retry-After, kept across a restart): chat guid -> that wall-clock time."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT chat_guid, MAX(not_before) FROM outbox WHERE not_before > ? "
                "GROUP BY chat_guid",
                (wall,),
            ).fetchall()
        return {chat: until for chat, until in rows}

    def mark_delivered(
        self, item: QueuedItem, now: float, replies: Sequence[NewOutgoing] = ()
    ) -> None:
        """Remove a delivered message and store the replies it earned, in one transaction:
        a crash can lose neither the reply nor the fact that the message went out."""
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
            # Skipped by hand (`skip-head`) while it was at the backend: it went out after
            # all, so it is no dead letter, and `retry-dead` must not post it again.
            db.execute("DELETE FROM dead_letter WHERE message_guid = ?", (item.message_guid,))
            db.execute(
                "INSERT OR REPLACE INTO delivered (message_guid, delivered_at) VALUES (?, ?)",
                (item.message_guid, now),
            )
            _write_meta(db, "last_delivery_at", repr(now))
            for reply in replies:
                insert_outgoing(db, reply, now)

    def dead_letter(self, item: QueuedItem, status: int | None, response: str, now: float) -> None:
        """Move a message aside. It keeps its outbox id, so `retry_dead` can put it back in
        the same place in its chat's order."""
        with self._tx() as db:
            _move_to_dead(db, item.id, item.attempts + 1, status, response, now)

    def skip(
        self, now: float, *, message_guid: str | None = None, chat_guid: str | None = None
    ) -> str | None:
        """Move one queued message to the dead letters by hand (`skip-head`): the one named,
        else the head of the chat named, else the oldest head that has already failed.
        Returns its guid, or None when nothing matched."""
        with self._tx() as db:
            if message_guid is not None:
                row = db.execute(
                    "SELECT id FROM outbox WHERE message_guid = ?", (message_guid,)
                ).fetchone()
            elif chat_guid is not None:
                row = db.execute(
                    "SELECT id FROM outbox WHERE chat_guid = ? ORDER BY id LIMIT 1", (chat_guid,)
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT id FROM outbox o WHERE attempts > 0 AND id = "
                    "(SELECT MIN(id) FROM outbox WHERE chat_guid = o.chat_guid) "
                    "ORDER BY id LIMIT 1"
                ).fetchone()
            if row is None:
                return None
            guid = db.execute("SELECT message_guid FROM outbox WHERE id = ?", row).fetchone()[0]
            _move_to_dead(db, row[0], None, None, "skipped by the operator (skip-head)", now)
        return str(guid)

    def dead_letters(self) -> list[DeadLetter]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, message_guid, status, response, attempts, dead_at "
                "FROM dead_letter ORDER BY id"
            ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def retry_dead(self, now: float, guids: Collection[str] | None = None) -> int:
        """Move dead letters (all, or those named) back into the outbox, each at its old place:
        ahead of the newer messages of its chat, so the chat's order is what it was. Each keeps
        its attempts: a message put back is not untried, and must not pass for one (lanes
        prefer untried messages as the probe while the backend looks sick).

        A dead letter whose old place is taken (a state file salvaged before ids were kept
        above every dead letter's) goes back under a new id, behind its chat's newer messages:
        late, but never dropped. Only dead letters now in the outbox are deleted."""
        chosen = "1" if guids is None else "message_guid IN (SELECT value FROM json_each(?))"
        args: tuple[object, ...] = () if guids is None else (json.dumps(sorted(guids)),)
        columns = "message_guid, source_rowid, body, enqueued_at, chat_guid, attempts, last_status"
        values = "message_guid, source_rowid, body, ?, chat_guid, attempts, status"
        with self._tx() as db:
            moved = 0
            for place in ("outbox_id", "NULL"):  # the old place; else a new one
                moved += db.execute(
                    f"INSERT OR IGNORE INTO outbox (id, {columns}) SELECT {place}, {values}"
                    f" FROM dead_letter WHERE {chosen} AND message_guid NOT IN"
                    " (SELECT message_guid FROM outbox) ORDER BY id",
                    (now, *args),
                ).rowcount
            db.execute(
                f"DELETE FROM dead_letter WHERE {chosen} AND message_guid IN "
                "(SELECT message_guid FROM outbox)",
                args,
            )
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
        """Which of these guids are queued, dead-lettered, were delivered recently, or were
        held back by a filter rule (a rule's effect is remembered as long as a delivery)."""
        found: set[str] = set()
        with self._tx() as db:
            for guid in guids:
                row = db.execute(
                    "SELECT 1 FROM outbox WHERE message_guid = ?1 UNION ALL "
                    "SELECT 1 FROM delivered WHERE message_guid = ?1 UNION ALL "
                    "SELECT 1 FROM dead_letter WHERE message_guid = ?1 UNION ALL "
                    "SELECT 1 FROM rule_hits WHERE message_guid = ?1 LIMIT 1",
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


def _chat_of(body: bytes) -> str:
    """The chat a queued body belongs to: the lane it waits in."""
    return _field_of(body, "chat_guid")


def _field_of(body: bytes, key: str) -> str:
    """A text field of a queued JSON body, "" when it has none."""
    try:
        value = json.loads(body).get(key)
    except (ValueError, AttributeError, RecursionError):
        return ""
    return value if isinstance(value, str) else ""


def _move_to_dead(
    db: sqlite3.Connection,
    item_id: int,
    attempts: int | None,
    status: int | None,
    response: str,
    now: float,
) -> None:
    """One outbox row to the dead letters, keeping its id; `attempts` None keeps the count."""
    db.execute(
        "INSERT OR REPLACE INTO dead_letter (message_guid, source_rowid, body, enqueued_at,"
        " attempts, status, response, dead_at, outbox_id, chat_guid)"
        " SELECT message_guid, source_rowid, body, enqueued_at, COALESCE(?, attempts), ?, ?, ?,"
        " id, chat_guid FROM outbox WHERE id = ?",
        (attempts, status, response, now, item_id),
    )
    db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))


def _write_cursor(db: sqlite3.Connection, cursor: Cursor, now: float) -> None:
    db.execute(
        "INSERT INTO cursor (id, rowid, fingerprint, updated_at, guid, date) "
        "VALUES (1, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET rowid = excluded.rowid, "
        "fingerprint = excluded.fingerprint, updated_at = excluded.updated_at, "
        "guid = excluded.guid, date = excluded.date",
        (cursor.rowid, cursor.fingerprint, now, cursor.guid, cursor.date),
    )


def _write_meta(db: sqlite3.Connection, key: str, value: str | None) -> None:
    if value is None:
        db.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
