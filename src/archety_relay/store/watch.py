"""Fingerprints of recent chat.db rows, and the conversation events found by comparing them.

A fingerprint is stored in the same transaction as the events its change produced, so a crash
either loses both (the change is found again on the next look) or keeps both (never reported
twice). Event ids are deterministic as well (`events.ChatEvent.event_id`): the same change can
only be stored once while the backend has not acknowledged it.

A row's first fingerprint is written by capture, in the transaction that queues the message
read from that same row (`outbox.enqueue`): an edit made a moment after capture is then compared
with what was sent, never taken for the original.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence

from ..model import ChatEvent, Fingerprint
from .db import Transactional

# The persona's unread messages are watched for a read receipt this many at most.
UNREAD_WATCH_LIMIT = 200
# The own-send check compares at most this many of a chat's latest sends: the relay's echo
# arrives seconds after its send, so it is always among them.
OWN_SEND_SCAN_LIMIT = 200


def insert_chat_event(db: sqlite3.Connection, event: ChatEvent, now: float) -> bool:
    return (
        db.execute(
            "INSERT OR IGNORE INTO events (event_id, event_type, payload, created_at) "
            "VALUES (?, ?, ?, ?)",
            (
                event.event_id,
                event.event_type,
                json.dumps(event.payload(), ensure_ascii=False),
                now,
            ),
        ).rowcount
        == 1
    )


def add_counts(db: sqlite3.Connection, counts: Mapping[str, int]) -> None:
    """Add to the running totals shown by `status` (meta keys `count_<name>`)."""
    for name, n in counts.items():
        if n:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT)",
                (f"count_{name}", str(n), n),
            )


def write_fingerprint(db: sqlite3.Connection, fp: Fingerprint) -> None:
    """Store a row's fingerprint: what the next look at the row is compared with."""
    db.execute(
        "INSERT INTO watched (guid, rowid, date, from_me, date_edited, unsent, "
        "is_empty, read_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (guid) DO UPDATE SET rowid = excluded.rowid, "
        "date = excluded.date, from_me = excluded.from_me, "
        "date_edited = excluded.date_edited, unsent = excluded.unsent, "
        "is_empty = excluded.is_empty, read_at = excluded.read_at",
        (
            fp.guid,
            fp.rowid,
            fp.date,
            int(fp.from_me),
            fp.date_edited,
            ",".join(map(str, fp.unsent)),
            int(fp.is_empty),
            fp.read_at,
        ),
    )


def _fingerprint(row: tuple) -> Fingerprint:
    guid, rowid, date, from_me, edited, unsent, empty, read_at = row
    parts = tuple(int(p) for p in unsent.split(",") if p)
    return Fingerprint(guid, rowid, date, bool(from_me), edited, parts, bool(empty), read_at)


class WatchQueries(Transactional):
    def watched(self, guids: Sequence[str]) -> dict[str, Fingerprint]:
        """The stored fingerprint of each of these guids that has one."""
        found: dict[str, Fingerprint] = {}
        with self._tx() as db:
            for start in range(0, len(guids), 500):
                chunk = list(guids[start : start + 500])
                rows = db.execute(
                    "SELECT guid, rowid, date, from_me, date_edited, unsent, is_empty, read_at "
                    f"FROM watched WHERE guid IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for r in rows:
                    found[r[0]] = _fingerprint(r)
        return found

    def unread_own(self, since_date: int) -> list[int]:
        """ROWIDs of the persona's messages since `since_date` not yet read by the recipient."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT rowid FROM watched WHERE from_me = 1 AND read_at = 0 AND date >= ? "
                "ORDER BY date DESC LIMIT ?",
                (since_date, UNREAD_WATCH_LIMIT),
            ).fetchall()
        return [r[0] for r in rows]

    def has_watched(self) -> bool:
        with self._tx() as db:
            return db.execute("SELECT 1 FROM watched LIMIT 1").fetchone() is not None

    def record_watch(
        self,
        fingerprints: Iterable[Fingerprint],
        events: Sequence[ChatEvent],
        now: float,
    ) -> int:
        """Store fingerprints and the events their changes produced, together. Returns how many
        events were new."""
        added = 0
        with self._tx() as db:
            for fp in fingerprints:
                write_fingerprint(db, fp)
            added = sum(insert_chat_event(db, e, now) for e in events)
        return added

    def is_own_send(self, chat_guid: str | None, text: str, since: float) -> bool:
        """Whether the relay itself sent (or is sending) this text to this chat lately: the echo
        of its own send, not the persona's account used on another device. Chats are compared
        by their last guid field (macOS 26 writes `any;-;+1555…` for `iMessage;-;+1555…`)."""
        wanted = (_chat_key(chat_guid), _words(text))
        with self._tx() as db:
            # A range of outgoing_status_updated per status; only this chat's rows (LIKE
            # narrows, the comparison below decides); the newest few.
            found = db.execute(
                "SELECT chat_guid, text FROM outgoing "
                "WHERE status IN ('sending', 'sent') AND updated_at >= ? "
                "AND (chat_guid = ? OR chat_guid LIKE ? ESCAPE '\\') "
                "ORDER BY updated_at DESC LIMIT ?",
                (since, wanted[0], "%;" + _like_escaped(wanted[0]), OWN_SEND_SCAN_LIMIT),
            ).fetchall()
        return any((_chat_key(c), _words(t)) == wanted for c, t in found)

    def prune_watched(self, before_date: int, own_unread_before: int) -> int:
        """Forget rows older than the window, except the persona's unread ones (kept until
        `own_unread_before`, waiting for a read receipt)."""
        with self._tx() as db:
            return db.execute(
                "DELETE FROM watched WHERE date < ? AND NOT (from_me = 1 AND read_at = 0 "
                "AND date >= ?)",
                (before_date, own_unread_before),
            ).rowcount


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _words(text: str) -> str:
    """Text compared by its words: Messages may trim or re-space what osascript handed it."""
    return " ".join(text.split())


def _chat_key(chat_guid: str | None) -> str:
    return (chat_guid or "").rsplit(";", 1)[-1]
