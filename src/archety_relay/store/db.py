"""The state database's connection: its schema, the one transaction helper, opening it safely.

The outbox file lives in the state directory with mode 0600 (it holds message text). Every access
goes through `_tx()`, one lock and one transaction, so the capture, sender, dispatcher and timer
threads share a single connection safely.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from ..errors import OutboxCorrupt, StateError
from .salvage import salvage

log = structlog.get_logger("archety_relay.store")

OUTBOX_FILE = "outbox.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rowid INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at REAL NOT NULL,
    guid TEXT,
    date INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_guid TEXT NOT NULL UNIQUE,
    source_rowid INTEGER NOT NULL,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT,
    chat_guid TEXT NOT NULL DEFAULT '',
    not_before REAL
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
    dead_at REAL NOT NULL,
    outbox_id INTEGER,
    chat_guid TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS delivered (
    message_guid TEXT PRIMARY KEY,
    delivered_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_at_idx ON delivered (delivered_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outgoing (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_guid TEXT NOT NULL,
    text TEXT NOT NULL,
    send_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL,
    command_id TEXT,
    reply_to TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sending_since REAL,
    last_error TEXT,
    rowid_floor INTEGER,
    apple_guid TEXT,
    file TEXT,
    staged TEXT
);
CREATE INDEX IF NOT EXISTS outgoing_status_due ON outgoing (status, send_at, id);
CREATE INDEX IF NOT EXISTS outgoing_unsent_by_chat ON outgoing (chat_guid, send_at, id)
    WHERE status IN ('pending', 'sending');
-- The own-send check (store.watch.is_own_send) looks at the last few minutes of sends; by
-- outgoing_status_due it read every sent row of the 30 days kept, once per own-account row.
CREATE INDEX IF NOT EXISTS outgoing_status_updated ON outgoing (status, updated_at);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    evict_rank INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS watched (
    guid TEXT PRIMARY KEY,
    rowid INTEGER NOT NULL,
    date INTEGER NOT NULL,
    from_me INTEGER NOT NULL,
    date_edited INTEGER NOT NULL,
    unsent TEXT NOT NULL,
    is_empty INTEGER NOT NULL,
    read_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS watched_date ON watched (date);
CREATE TABLE IF NOT EXISTS commands_seen (
    command_id TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rules (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chat_state (
    chat_key TEXT PRIMARY KEY,
    context TEXT,
    context_at REAL,
    plan TEXT,
    plan_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rule_hits (
    message_guid TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    rule TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent_outcomes (
    guid TEXT PRIMARY KEY,
    rowid INTEGER NOT NULL,
    date INTEGER NOT NULL,
    state TEXT NOT NULL,
    error INTEGER NOT NULL,
    changed_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sent_outcomes_date ON sent_outcomes (date);
"""


# Columns added after the first release: (table, column, declaration). A state file written by
# an older version gains them on open; the CREATE TABLEs above already have them.
_ADDED_COLUMNS = (
    ("outbox", "chat_guid", "TEXT NOT NULL DEFAULT ''"),
    ("outbox", "not_before", "REAL"),
    ("dead_letter", "outbox_id", "INTEGER"),
    ("dead_letter", "chat_guid", "TEXT NOT NULL DEFAULT ''"),
    # The guid and date of the row at the cursor: a chat.db file rewritten with the same
    # history is recognised by them, and a replaced one resumes from that date.
    ("cursor", "guid", "TEXT"),
    ("cursor", "date", "INTEGER"),
    # chat.db's MAX(ROWID) just before a send, and the Apple guid of the row credited to it:
    # a send is confirmed only by a newer row no other send was credited with.
    ("outgoing", "rowid_floor", "INTEGER"),
    ("outgoing", "apple_guid", "TEXT"),
    # Which unacknowledged events go first when there are too many (store.outgoing.EVICT_*).
    ("events", "evict_rank", "INTEGER NOT NULL DEFAULT 1"),
    # A file the persona sends (issue #19) and, once fetched, where it is staged (JSON).
    ("outgoing", "file", "TEXT"),
    ("outgoing", "staged", "TEXT"),
)
_AFTER_MIGRATION = """
UPDATE outbox SET chat_guid = COALESCE(json_extract(CAST(body AS TEXT), '$.chat_guid'), '')
    WHERE chat_guid = '' AND json_valid(CAST(body AS TEXT));
CREATE INDEX IF NOT EXISTS outbox_chat ON outbox (chat_guid, id);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a state file from an older version up to this schema; idempotent."""
    for table, column, declaration in _ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    conn.executescript(_AFTER_MIGRATION)


class Transactional:
    """Owns the connection; every query of every mixin runs inside `_tx()`."""

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


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise OutboxCorrupt(f"outbox {path} failed its integrity check: {check}")
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        # FULL: a delivered-or-queued decision must survive a power cut, not just a crash.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        _migrate(conn)
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


def open_connection(
    state_dir: Path,
    now: float | None = None,
    *,
    repair: bool = False,
    prepare: Callable[[sqlite3.Connection], None] = lambda conn: None,
) -> tuple[sqlite3.Connection, Path, dict[str, Any] | None]:
    """Open (or create) the state file: (connection, its path, the reset if one was repaired).

    `prepare` completes the schema (tables other modules own) on every file opened here.

    A corrupt file is replaced only when `repair` is set: `run` and `--once` hold the pid lock,
    so no daemon has the file open. Every other command (status, doctor, retry-dead,
    purge-dead, backfill) reports the damage and exits 6 instead: a look at the state must
    never change it under a running daemon.
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
        conn = connect(path)
    except OutboxCorrupt as exc:
        if not repair:
            exc.hint = (
                "The state file is damaged. `archety-relay run` (or `--once`) moves it aside and "
                "carries what can still be read into a fresh one; nothing was changed."
            )
            raise
        reset = _replace_corrupt(path, exc, now or time.time(), prepare)
        conn = connect(path)
        prepare(conn)
        return conn, path, reset
    prepare(conn)
    return conn, path, None


def _replace_corrupt(
    path: Path, exc: OutboxCorrupt, now: float, prepare: Callable[[sqlite3.Connection], None]
) -> dict[str, Any]:
    """Build the fresh file beside the damaged one, carry over what can be read, then swap.

    Until the swap the damaged file stays where it is, so a crash or kill -9 mid-way only means
    the next start does it again; nothing is abandoned half-salvaged.
    """
    staging = path.with_name(OUTBOX_FILE + ".salvaging")
    for suffix in ("", "-wal", "-shm"):
        Path(str(staging) + suffix).unlink(missing_ok=True)
    _create_private(staging)
    fresh = connect(staging)
    try:
        prepare(fresh)
        try:
            salvaged = salvage(path, fresh)
        except Exception as failure:  # never let salvage keep the relay from starting
            log.error("state_salvage_failed", error_type=type(failure).__name__)
            salvaged = {}
        aside = path.with_name(f"{OUTBOX_FILE}.corrupt-{int(now)}")
        reset: dict[str, Any] = {"at": now, "moved_to": str(aside), "salvaged": salvaged}
        if "cursor" not in salvaged:
            # The file's last write is about when the relay last captured: capture resumes
            # from rows dated since then rather than skipping to MAX(ROWID).
            reset["resume_since"] = _mtime(path, now)
        fresh.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('state_reset', ?)",
            (json.dumps(reset),),
        )
    finally:
        fresh.close()  # the last connection: its WAL is checkpointed into the file
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    staging.rename(path)
    log.error("outbox_corrupt_moved_aside", error=str(exc), moved_to=str(aside))
    log.warning("state_reset", moved_to=str(aside), salvaged=salvaged)
    return reset


def _mtime(path: Path, default: float) -> float:
    times = []
    for suffix in ("", "-wal"):
        try:
            times.append(os.stat(str(path) + suffix).st_mtime)
        except OSError:
            continue
    return max(times, default=default)


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
