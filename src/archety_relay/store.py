"""The only SQL on our own state database: the cursor, the outbox, dead letters, a few facts.

The outbox file lives in the state directory with mode 0600 (it holds message text). Every access
goes through `_tx()`, one lock and one transaction, so the capture, sender and timer threads
share a single connection safely. Enqueueing a batch and moving the cursor past it are one
transaction: a kill -9 at any instant leaves either both or neither.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from .errors import OutboxCorrupt, StateError

log = structlog.get_logger("archety_relay.store")

OUTBOX_FILE = "outbox.db"
# Delivered guids are remembered this long so an iCloud re-insert of the same message is not sent again.
DELIVERED_MEMORY_SECONDS = 7 * 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rowid INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_guid TEXT NOT NULL UNIQUE,
    source_rowid INTEGER NOT NULL,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_guid TEXT NOT NULL UNIQUE,
    source_rowid INTEGER NOT NULL,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    status INTEGER,
    response TEXT,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS delivered (
    message_guid TEXT PRIMARY KEY,
    delivered_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_at_idx ON delivered (delivered_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""


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


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StateError(
                    f"state database {self.path} failed: {exc}",
                    hint="Check that the state directory's disk has space and is writable "
                    "(ARCHETY_STATE_DIR). Nothing is lost: the cursor did not move.",
                ) from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- cursor -----------------------------------------------------------------------------
    def cursor(self) -> Cursor | None:
        with self._tx() as db:
            row = db.execute("SELECT rowid, fingerprint FROM cursor WHERE id = 1").fetchone()
        return Cursor(row[0], row[1]) if row else None

    def set_cursor(self, cursor: Cursor, now: float) -> None:
        with self._tx() as db:
            _write_cursor(db, cursor, now)

    def enqueue(
        self, items: Iterable[tuple[str, int, bytes]], cursor: Cursor | None, now: float
    ) -> int:
        """Store (guid, rowid, body) items and move the cursor, atomically. Returns how many were new.

        `cursor=None` (a backfill of rows behind the cursor) leaves the cursor where it is.
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

    def mark_delivered(self, item: QueuedItem, now: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
            db.execute(
                "INSERT OR REPLACE INTO delivered (message_guid, delivered_at) VALUES (?, ?)",
                (item.message_guid, now),
            )
            _write_meta(db, "last_delivery_at", repr(now))

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


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise OutboxCorrupt(f"outbox {path} failed its integrity check: {check}")
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        # FULL: a delivered-or-queued decision must survive a power cut, not just a crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError) and "corrupt" not in str(exc).lower():
            raise StateError(
                f"state database {path} cannot be opened: {exc}",
                hint="Check that ARCHETY_STATE_DIR exists, is writable and has free space.",
            ) from exc
        raise OutboxCorrupt(f"outbox {path} is not a sound SQLite database: {exc}") from exc
    except OutboxCorrupt:
        conn.close()
        raise
    return conn


def open_store(state_dir: Path, now: float | None = None) -> Store:
    """Open (or create) the outbox; a corrupt one is moved aside and a fresh one started.

    A fresh outbox has no cursor, so the relay begins at chat.db's current MAX(ROWID) instead
    of crash-looping under launchd on a file it cannot read.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateError(
            f"state directory {state_dir} cannot be created: {exc}",
            hint="Set ARCHETY_STATE_DIR to a writable directory.",
        ) from exc
    path = state_dir / OUTBOX_FILE
    _create_private(path)
    try:
        conn = _connect(path)
    except OutboxCorrupt as exc:
        aside = path.with_name(f"{OUTBOX_FILE}.corrupt-{int(now or time.time())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        log.error("outbox_corrupt_moved_aside", error=str(exc), moved_to=str(aside))
        _create_private(path)
        conn = _connect(path)
    return Store(conn, path)


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does, so message text is never world-readable."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise StateError(
            f"state database {path} cannot be created: {exc}",
            hint="Check that ARCHETY_STATE_DIR is writable and has free space.",
        ) from exc
