"""The only SQL on our own state database (`<state dir>/outbox.db`).

db        the connection, schema, the one transaction helper, safe opening
outbox    cursor, queued messages, dead letters, delivered guids, facts for status
outgoing  replies and sends waiting for Messages.app, events for the backend, seen commands
uploads   pictures on their way to /photo/upload, message bodies frozen once settled
watch     fingerprints of recent chat.db rows, and the events their changes produced
transcripts voice notes sent without Apple's transcript, watched for a late one
alerts    alerts raised and not yet cleared, with their `alert` / `alert_cleared` events
outcomes  what became of the persona's sent messages (delivered, failed late), for a day
commands  one sync command's work in one transaction; rules and per-chat context it keeps

Owns the state database's file and SQL. May import: the top-level values (`model`, `errors`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .alerts import AlertQueries
from .commands import ChatState, CommandQueries, CommandTx
from .db import OUTBOX_FILE, open_connection
from .outbox import (
    DELIVERED_MEMORY_SECONDS,
    Cursor,
    DeadLetter,
    OutboxQueries,
    QueuedItem,
    QueueStats,
)
from .outcomes import OutcomeQueries
from .outgoing import Event, NewOutgoing, Outgoing, OutgoingQueries, StagedFile, StagedRow
from .transcripts import TranscriptQueries, TranscriptWatch
from .transcripts import migrate as transcripts_migrate
from .uploads import UploadQueries, UploadRecord
from .uploads import migrate as uploads_migrate
from .watch import WatchQueries


class Store(
    OutboxQueries,
    OutgoingQueries,
    UploadQueries,
    WatchQueries,
    CommandQueries,
    AlertQueries,
    TranscriptQueries,
    OutcomeQueries,
):
    """Every query on the state database, sharing one connection and one lock."""

    def prune(self, now: float) -> dict[str, int]:
        """Drop everything kept only for a while; how many rows of each kind went.

        The daemon runs this on a timer of its own: a sync that keeps failing (a 404 during a
        redeploy that lasts) must not let delivered guids, events and history grow unbounded.
        """
        return {
            "delivered": self.prune_delivered(now),
            "history": self.prune_history(now),
            "rule_hits": self.prune_rule_hits(now),
            "chat_state": self.prune_chat_state(now),
            "uploads": self.prune_uploads(now),
        }


def _prepare(conn: sqlite3.Connection) -> None:
    """The tables other modules own, on every state file opened."""
    uploads_migrate(conn)
    transcripts_migrate(conn)


def open_store(state_dir: Path, now: float | None = None, *, repair: bool = False) -> Store:
    """Open (or create) the state file. A corrupt one raises OutboxCorrupt (exit 6), unless
    `repair` (run, --once): then a fresh one replaces it with every readable row carried over,
    the damaged file is kept aside, and a `state_reset` fact is left for `status`."""
    conn, path, _reset = open_connection(state_dir, now, repair=repair, prepare=_prepare)
    return Store(conn, path)


__all__ = [
    "DELIVERED_MEMORY_SECONDS",
    "OUTBOX_FILE",
    "ChatState",
    "CommandTx",
    "Cursor",
    "DeadLetter",
    "Event",
    "NewOutgoing",
    "Outgoing",
    "QueueStats",
    "QueuedItem",
    "StagedFile",
    "StagedRow",
    "Store",
    "TranscriptWatch",
    "UploadRecord",
    "open_store",
]
