"""Voice notes that went to the backend without Apple's transcript, watched for a late one.

The watch row and the `voice_transcribed` event that ends it are written in one transaction,
and the event's id is the message's (`evt-voice_transcribed-<guid>`): a crash between finding
the transcript and storing it finds it again, and it is reported once.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..model import ChatEvent
from .db import Transactional
from .watch import insert_chat_event

SCHEMA = """
CREATE TABLE IF NOT EXISTS transcript_watch (
    message_guid TEXT PRIMARY KEY,
    chat_guid TEXT NOT NULL,
    since REAL NOT NULL,
    until REAL NOT NULL,
    next_try_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class TranscriptWatch:
    message_guid: str
    chat_guid: str
    since: float
    until: float
    attempts: int


class TranscriptQueries(Transactional):
    def watch_transcript(self, message_guid: str, chat_guid: str, until: float, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO transcript_watch "
                "(message_guid, chat_guid, since, until, next_try_at) VALUES (?, ?, ?, ?, ?)",
                (message_guid, chat_guid, now, until, now + 1.0),
            )

    def due_transcripts(self, now: float, limit: int = 50) -> list[TranscriptWatch]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT message_guid, chat_guid, since, until, attempts FROM transcript_watch "
                "WHERE next_try_at <= ? ORDER BY next_try_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [TranscriptWatch(*row) for row in rows]

    def next_transcript_at(self) -> float | None:
        with self._tx() as db:
            value = db.execute("SELECT MIN(next_try_at) FROM transcript_watch").fetchone()[0]
        return float(value) if value is not None else None

    def transcript_looked(self, message_guid: str, next_try_at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE transcript_watch SET attempts = attempts + 1, next_try_at = ? "
                "WHERE message_guid = ?",
                (next_try_at, message_guid),
            )

    def transcript_found(self, message_guid: str, event: ChatEvent, now: float) -> None:
        """The watch ends and its event is stored, together."""
        with self._tx() as db:
            db.execute("DELETE FROM transcript_watch WHERE message_guid = ?", (message_guid,))
            insert_chat_event(db, event, now)

    def forget_transcript(self, message_guid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM transcript_watch WHERE message_guid = ?", (message_guid,))


def migrate(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)
