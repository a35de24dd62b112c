"""Outgoing work (replies, sends, scheduled sends), the events that report it, seen commands.

A file the persona sends (issue #19) is a row of its own (text "", `file` the URL and name):
the same table, order, confirmation and recovery as text. Once fetched and staged, its path,
size and sha256 are kept with it (`staged`), so a retry sends the same bytes without fetching
again.

Outgoing rows are stored before anything is sent. A row is marked `sending` (committed) before
osascript runs and `sent` after; a row found `sending` after a crash is checked against chat.db
(Messages writes what it sent as `is_from_me = 1`) before it is tried again.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..model import FileToSend
from .db import Transactional

# Finished outgoing rows and seen command ids are kept this long (list_scheduled, duplicates).
HISTORY_SECONDS = 30 * 86400
# Events the backend never acknowledges are dropped after this long, or beyond this many, so a
# backend that ignores ack_events cannot grow the file without bound.
EVENT_MAX_AGE_SECONDS = 7 * 86400
EVENT_MAX_COUNT = 5000
# Beyond EVENT_MAX_COUNT the backend's own emit_event echoes go first, then the relay's reports
# (chat events, filtered, sent); the outcome of a backend command (command_completed/_failed,
# message_sent/_failed naming a command_id) goes only by age, or past this last-resort bound.
EVENT_HARD_MAX_COUNT = 10 * EVENT_MAX_COUNT
EVICT_RESULT, EVICT_REPORT, EVICT_EMITTED = 0, 1, 2
# Events sent with one sync.
EVENT_PAGE_SIZE = 100

PENDING, SENDING, SENT, FAILED, CANCELLED, MISSED = (
    "pending",
    "sending",
    "sent",
    "failed",
    "cancelled",
    "missed",
)


@dataclass(frozen=True)
class NewOutgoing:
    chat_guid: str
    text: str
    send_at: float
    origin: str  # "reply" | "send_message" | "schedule_message"
    command_id: str | None = None
    reply_to: str | None = None
    file: FileToSend | None = None


@dataclass(frozen=True)
class StagedFile:
    """A fetched file where Messages may read it."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StagedRow:
    """What the staging prune needs of an outgoing row (see outbound.retention)."""

    id: int
    status: str
    attempts: int
    updated_at: float  # when it finished, once it has
    apple_guid: str | None  # the chat.db row that confirmed it (sent)


@dataclass(frozen=True)
class Outgoing:
    id: int
    chat_guid: str
    text: str
    send_at: float
    status: str
    attempts: int
    origin: str
    command_id: str | None
    reply_to: str | None
    sending_since: float | None
    # chat.db's MAX(ROWID) before the first attempt: only a newer row can be this send's.
    rowid_floor: int | None = None
    # Why the last attempt did not finish (an unconfirmed send is looked for again, not resent).
    last_error: str | None = None
    file: FileToSend | None = None  # a file to send instead of text
    staged: StagedFile | None = None  # that file, fetched and staged


@dataclass(frozen=True)
class Event:
    event_id: str
    event_type: str
    payload: dict[str, Any]
    created_at: float


_COLUMNS = (
    "id, chat_guid, text, send_at, status, attempts, origin, command_id, reply_to, sending_since, "
    "rowid_floor, last_error, file, staged"
)


def _outgoing(row: Sequence[Any]) -> Outgoing:
    *plain, file, staged = row
    return replace(
        Outgoing(*plain),
        file=FileToSend.from_json(file) if file else None,
        staged=StagedFile(**json.loads(staged)) if staged else None,
    )


# One pass over the unsent rows in the partial index outgoing_unsent_by_chat, numbered per chat.
# A correlated subquery per row was quadratic: 4,000 pending sends took over a second, twice per
# dispatch step, under the lock the capture and sender threads need too.
HEADS_DUE_SQL = (
    f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, ROW_NUMBER() OVER "
    "(PARTITION BY chat_guid ORDER BY send_at, id) AS place FROM outgoing "
    "WHERE status IN ('pending', 'sending')) "
    "WHERE place = 1 AND send_at <= ? ORDER BY send_at, id"
)


def insert_outgoing(db: sqlite3.Connection, item: NewOutgoing, now: float) -> int:
    cur = db.execute(
        "INSERT INTO outgoing (chat_guid, text, send_at, origin, command_id, reply_to, "
        "created_at, updated_at, file) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            item.chat_guid,
            item.text,
            item.send_at,
            item.origin,
            item.command_id,
            item.reply_to,
            now,
            now,
            item.file.to_json() if item.file else None,
        ),
    )
    return int(cur.lastrowid or 0)


def insert_event(
    db: sqlite3.Connection,
    event_type: str,
    payload: dict[str, Any],
    now: float,
    *,
    emitted: bool = False,
) -> str:
    """Store an event for the next syncs. `emitted`: the backend asked for it (emit_event), so
    it is the first to go when there are too many (see cap_events)."""
    event_id = f"evt-{uuid.uuid4()}"
    rank = EVICT_EMITTED if emitted else EVICT_RESULT if payload.get("command_id") else EVICT_REPORT
    db.execute(
        "INSERT INTO events (event_id, event_type, payload, created_at, evict_rank) "
        "VALUES (?, ?, ?, ?, ?)",
        (event_id, event_type, json.dumps(payload, ensure_ascii=False), now, rank),
    )
    return event_id


def cap_events(db: sqlite3.Connection, now: float) -> int:
    """Drop unacknowledged events older than EVENT_MAX_AGE_SECONDS, then, beyond
    EVENT_MAX_COUNT, emitted events and then reports, oldest first; command results only past
    EVENT_HARD_MAX_COUNT. A flood of emit_event can no longer push out a command's outcome."""
    removed = db.execute(
        "DELETE FROM events WHERE created_at < ?", (now - EVENT_MAX_AGE_SECONDS,)
    ).rowcount
    count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    if count > EVENT_MAX_COUNT:
        removed += db.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE evict_rank > 0 "
            "ORDER BY evict_rank DESC, seq LIMIT ?)",
            (count - EVENT_MAX_COUNT,),
        ).rowcount
        count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    if count > EVENT_HARD_MAX_COUNT:
        removed += db.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
            (count - EVENT_HARD_MAX_COUNT,),
        ).rowcount
    return int(removed)


def cancel_pending(db: sqlite3.Connection, message_id: int, now: float) -> bool:
    """Cancel a pending send; the files of the same scheduled command go with it (its
    schedule_id names the first part only)."""
    done = (
        db.execute(
            "UPDATE outgoing SET status = 'cancelled', updated_at = ? "
            "WHERE id = ? AND status = 'pending'",
            (now, message_id),
        ).rowcount
        == 1
    )
    if done:
        db.execute(
            "UPDATE outgoing SET status = 'cancelled', updated_at = ? WHERE status = 'pending' "
            "AND file IS NOT NULL AND id > ? AND origin = 'schedule_message' AND command_id = "
            "(SELECT command_id FROM outgoing WHERE id = ? AND command_id IS NOT NULL)",
            (now, message_id, message_id),
        )
    return done


def select_scheduled(
    db: sqlite3.Connection, status: str | None, limit: int = -1, offset: int = 0
) -> list[Outgoing]:
    """Schedules by send time, `limit` of them (-1: all) from `offset`."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM outgoing WHERE origin = 'schedule_message' "
        "AND (? IS NULL OR status = ?) ORDER BY send_at, id LIMIT ? OFFSET ?",
        (status, status, limit, offset),
    ).fetchall()
    return [_outgoing(r) for r in rows]


def schedule_ids(db: sqlite3.Connection, rows: Sequence[Outgoing]) -> dict[int, int]:
    """The schedule each of these scheduled rows belongs to: the id of the first row its
    command stored (what schedule_message reported as `schedule_id`, and what cancel takes).
    A command's text and files are rows of their own; this says they are one schedule."""
    commands = list({o.command_id for o in rows if o.command_id is not None})
    first: dict[str, int] = {}
    for start in range(0, len(commands), 500):  # well under SQLite's variable limit
        chunk = commands[start : start + 500]
        first.update(
            db.execute(
                "SELECT command_id, MIN(id) FROM outgoing WHERE origin = 'schedule_message' "
                f"AND command_id IN ({','.join('?' * len(chunk))}) GROUP BY command_id",
                chunk,
            ).fetchall()
        )
    return {o.id: first.get(o.command_id or "", o.id) for o in rows}


def count_scheduled(db: sqlite3.Connection, status: str | None) -> int:
    return int(
        db.execute(
            "SELECT COUNT(*) FROM outgoing WHERE origin = 'schedule_message' "
            "AND (? IS NULL OR status = ?)",
            (status, status),
        ).fetchone()[0]
    )


def mark_seen(db: sqlite3.Connection, command_id: str, now: float) -> bool:
    """True the first time a command id is seen; a repeat is not executed again."""
    return (
        db.execute(
            "INSERT OR IGNORE INTO commands_seen (command_id, seen_at) VALUES (?, ?)",
            (command_id, now),
        ).rowcount
        == 1
    )


class OutgoingQueries(Transactional):
    def add_outgoing(
        self,
        items: Sequence[NewOutgoing],
        now: float,
        event: tuple[str, dict[str, Any]] | None = None,
    ) -> list[int]:
        """Store outgoing rows (and optionally an event about them) in one transaction."""
        with self._tx() as db:
            ids = [insert_outgoing(db, item, now) for item in items]
            if event is not None:
                insert_event(db, event[0], {**event[1], "message_ids": ids}, now)
        return ids

    def heads_due(self, now: float) -> list[Outgoing]:
        """The earliest unsent row of each chat, if it is due: one chat never blocks another,
        and within a chat bubbles keep their order."""
        with self._tx() as db:
            rows = db.execute(HEADS_DUE_SQL, (now,)).fetchall()
        return [_outgoing(r) for r in rows]

    def next_due_at(self) -> float | None:
        with self._tx() as db:
            value = db.execute(
                "SELECT MIN(send_at) FROM outgoing WHERE status IN ('pending', 'sending')"
            ).fetchone()[0]
        return float(value) if value is not None else None

    def mark_sending(self, item: Outgoing, now: float, rowid_floor: int) -> None:
        """Committed before osascript runs. The floor of the first attempt is kept: a row a
        timed-out attempt made late is still this send's."""
        with self._tx() as db:
            db.execute(
                "UPDATE outgoing SET status = 'sending', attempts = attempts + 1, "
                "sending_since = ?, updated_at = ?, rowid_floor = COALESCE(rowid_floor, ?) "
                "WHERE id = ?",
                (now, now, rowid_floor, item.id),
            )

    def set_staged(self, item: Outgoing, staged: StagedFile, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outgoing SET staged = ?, updated_at = ? WHERE id = ?",
                (json.dumps(staged.__dict__), now, item.id),
            )

    def staged_rows(self, ids: Sequence[int]) -> dict[int, StagedRow]:
        """The rows these outgoing ids name (a staged folder is named by its row's id); an id
        with no row (pruned after HISTORY_SECONDS, another state file) is absent."""
        found: dict[int, StagedRow] = {}
        wanted = list(dict.fromkeys(ids))
        with self._tx() as db:
            for start in range(0, len(wanted), 500):  # well under SQLite's variable limit
                chunk = wanted[start : start + 500]
                rows = db.execute(
                    "SELECT id, status, attempts, updated_at, apple_guid FROM outgoing "
                    f"WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update((r[0], StagedRow(*r)) for r in rows)
        return found

    def files_waiting(self) -> int:
        """Files stored to send and not sent yet (status)."""
        with self._tx() as db:
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM outgoing WHERE file IS NOT NULL "
                    "AND status IN ('pending', 'sending')"
                ).fetchone()[0]
            )

    def credited_guids(self, chat_guids: Sequence[str], since: float) -> set[str]:
        """Apple guids of chat.db rows already credited to sends in these chats since `since`:
        one row confirms one send only (two "ok" bubbles are two rows)."""
        guids = list(chat_guids)
        with self._tx() as db:
            rows = db.execute(
                "SELECT apple_guid FROM outgoing WHERE status = 'sent' AND updated_at >= ? "
                f"AND apple_guid IS NOT NULL AND chat_guid IN ({','.join('?' * len(guids))})",
                (since, *guids),
            ).fetchall()
        return {r[0] for r in rows}

    def finish(
        self,
        item: Outgoing,
        status: str,
        now: float,
        event_type: str,
        details: dict[str, Any],
        error: str | None = None,
        apple_guid: str | None = None,
    ) -> None:
        """Final state of a row plus the event that reports it, together; a sent row keeps the
        Apple guid of the chat.db row that confirmed it."""
        with self._tx() as db:
            db.execute(
                "UPDATE outgoing SET status = ?, last_error = ?, updated_at = ?, "
                "apple_guid = COALESCE(?, apple_guid) WHERE id = ?",
                (status, error, now, apple_guid, item.id),
            )
            insert_event(db, event_type, details, now)

    def retry_later(self, item: Outgoing, send_at: float, error: str, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outgoing SET status = 'pending', send_at = ?, last_error = ?, "
                "updated_at = ? WHERE id = ?",
                (send_at, error, now, item.id),
            )

    def cancel(self, message_id: int, now: float) -> bool:
        with self._tx() as db:
            return cancel_pending(db, message_id, now)

    def scheduled(self, status: str | None) -> list[Outgoing]:
        with self._tx() as db:
            return select_scheduled(db, status)

    def outgoing_counts(self) -> dict[str, int]:
        with self._tx() as db:
            return dict(
                db.execute("SELECT status, COUNT(*) FROM outgoing GROUP BY status").fetchall()
            )

    def prune_history(self, now: float) -> int:
        """Drop finished outgoing rows, old command ids and unacknowledged old events."""
        with self._tx() as db:
            removed = db.execute(
                "DELETE FROM outgoing WHERE status IN ('sent', 'failed', 'cancelled', 'missed') "
                "AND updated_at < ?",
                (now - HISTORY_SECONDS,),
            ).rowcount
            removed += db.execute(
                "DELETE FROM commands_seen WHERE seen_at < ?", (now - HISTORY_SECONDS,)
            ).rowcount
            removed += cap_events(db, now)
        return removed

    def cap_events(self, now: float) -> int:
        """Apply the event bounds now (after each sync answer, not only at the hourly prune)."""
        with self._tx() as db:
            return cap_events(db, now)

    # -- commands and events ----------------------------------------------------------------
    def first_sight(self, command_id: str, now: float) -> bool:
        """True the first time a command id is seen; a repeat is not executed again."""
        with self._tx() as db:
            return mark_seen(db, command_id, now)

    def add_event(self, event_type: str, payload: dict[str, Any], now: float) -> str:
        with self._tx() as db:
            return insert_event(db, event_type, payload, now)

    def pending_events(self, limit: int = 100) -> list[Event]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT event_id, event_type, payload, created_at FROM events ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [Event(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def next_event_page(self, limit: int = EVENT_PAGE_SIZE) -> list[Event]:
        """The events to send with the next sync: up to `limit`, continuing after the last page
        handed out and wrapping around to the oldest.

        Always taking the oldest `limit` let unacknowledged events starve every newer one (100
        `message_sent` the backend never acks, and a `command_completed` behind them never went
        out). With paging every pending event is offered within a few syncs, oldest first when
        they all fit.
        """
        columns = "seq, event_id, event_type, payload, created_at"
        with self._tx() as db:
            mark = db.execute(
                "SELECT value FROM meta WHERE key = 'events_paged_through'"
            ).fetchone()
            after = int(mark[0]) if mark and str(mark[0]).isdigit() else 0
            rows = db.execute(
                f"SELECT {columns} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
            if len(rows) < limit:
                rows += db.execute(
                    f"SELECT {columns} FROM events WHERE seq <= ? ORDER BY seq LIMIT ?",
                    (after, limit - len(rows)),
                ).fetchall()
            if rows:
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('events_paged_through', ?)",
                    (str(rows[-1][0]),),
                )
        return [Event(r[1], r[2], json.loads(r[3]), r[4]) for r in sorted(rows)]

    def ack_events(self, event_ids: Sequence[str]) -> int:
        with self._tx() as db:
            return sum(
                db.execute("DELETE FROM events WHERE event_id = ?", (e,)).rowcount
                for e in event_ids
            )
