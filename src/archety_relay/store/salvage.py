"""Salvage: what can still be read from a damaged state file goes into the fresh one.

A state file that fails its integrity check is moved aside (by `run`/`--once` only) and a fresh
one started; without salvage its queue, scheduled sends, cursor, dead letters and delivered
memory would be abandoned with it. Every table the fresh file has is copied row by row from the
damaged one, each table on its own: a damaged page ends that table's copy, never the others'.
Ids handed out by the damaged file are never handed out again (see `_keep_ids_ahead`).
When even the file header is unreadable, the pages are read again under a rebuilt header.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import urllib.parse
from pathlib import Path

import structlog

log = structlog.get_logger("archety_relay.store")

# SQLite's page sizes, most likely first (4096 is the default on macOS and Linux).
_PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536)
_MAGIC = b"SQLite format 3\x00"


def salvage(damaged: Path, fresh: sqlite3.Connection) -> dict[str, int]:
    """Copy every readable row of `damaged` into `fresh`'s tables; rows copied per table."""
    scratch = damaged.with_name(damaged.name + ".salvage")  # in the private state directory
    try:
        old = _open_readable(damaged, scratch)
        if old is None:
            return {}
        try:
            copied = _copy_tables(old, fresh)
            _keep_ids_ahead(old, fresh)
            return copied
        finally:
            old.close()
    finally:
        scratch.unlink(missing_ok=True)


def _open(path: Path) -> sqlite3.Connection | None:
    """Read-only, and tolerant of text that is not UTF-8 (a damaged page may hold anything)."""
    try:
        conn = sqlite3.connect(
            "file:" + urllib.parse.quote(str(path)) + "?mode=ro", uri=True, isolation_level=None
        )
        conn.text_factory = lambda b: b.decode("utf-8", "replace")
        conn.execute("SELECT name FROM sqlite_master").fetchall()
        return conn
    except sqlite3.DatabaseError:
        return None


def _open_readable(damaged: Path, scratch: Path) -> sqlite3.Connection | None:
    conn = _open(damaged)
    if conn is not None:
        return conn
    # The header may be what is damaged: try the pages under a rebuilt one, on a copy.
    try:
        data = damaged.read_bytes()
    except OSError:
        return None
    for size in _PAGE_SIZES:
        if len(data) < size or len(data) % size:
            continue
        fd = os.open(scratch, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_rebuilt_header(size, len(data) // size) + data[100:])
        conn = _open(scratch)
        if conn is not None:
            return conn
    return None


def _rebuilt_header(page_size: int, pages: int) -> bytes:
    """The 100-byte database header SQLite writes for a UTF-8, rollback-journal file."""
    header = bytearray(100)
    header[0:16] = _MAGIC
    struct.pack_into(">H", header, 16, 1 if page_size == 65536 else page_size)
    header[18:24] = bytes((1, 1, 0, 64, 32, 32))  # versions, reserved, payload fractions
    struct.pack_into(">I", header, 24, 1)  # file change counter
    struct.pack_into(">I", header, 28, pages)  # size in pages
    struct.pack_into(">I", header, 40, 1)  # schema cookie
    struct.pack_into(">I", header, 44, 4)  # schema format
    struct.pack_into(">I", header, 56, 1)  # text encoding: UTF-8
    struct.pack_into(">I", header, 92, 1)  # version-valid-for (matches the change counter)
    struct.pack_into(">I", header, 96, 3_045_000)
    return bytes(header)


def _keep_ids_ahead(old: sqlite3.Connection, fresh: sqlite3.Connection) -> None:
    """New rows must never take an id the damaged file had handed out: a dead letter keeps its
    outbox id to go back to its place (`retry_dead`), and the backend knows schedules by their
    outgoing id. `sqlite_sequence` is not copied with the tables (SQLite keeps it itself, from
    the rows copied), so each AUTOINCREMENT counter is set to at least the damaged file's, and
    the outbox's to at least every dead letter's old outbox id."""
    try:
        floors = {
            str(name): seq
            for name, seq in old.execute("SELECT name, seq FROM sqlite_sequence").fetchall()
            if isinstance(seq, int)
        }
    except sqlite3.DatabaseError:
        floors = {}  # a damaged page: the dead letters' ids below still hold for the outbox
    dead = fresh.execute("SELECT MAX(outbox_id) FROM dead_letter").fetchone()[0]
    if isinstance(dead, int):
        floors["outbox"] = max(floors.get("outbox", 0), dead)
    tables = {
        row[0]
        for row in fresh.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%AUTOINCREMENT%'"
        )
    }
    fresh.execute("BEGIN IMMEDIATE")
    for table, floor in floors.items():
        if table not in tables:
            continue
        if not fresh.execute(
            "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?", (floor, table)
        ).rowcount:
            fresh.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, floor))
    fresh.execute("COMMIT")


def _copy_tables(old: sqlite3.Connection, fresh: sqlite3.Connection) -> dict[str, int]:
    tables = [
        row[0]
        for row in fresh.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    copied: dict[str, int] = {}
    for table in tables:
        try:
            have = {row[1] for row in old.execute(f"PRAGMA table_info({table})")}
        except sqlite3.DatabaseError:
            continue
        columns = [row[1] for row in fresh.execute(f"PRAGMA table_info({table})") if row[1] in have]
        if not columns:
            continue
        names = ", ".join(columns)
        insert = f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
        count = 0
        fresh.execute("BEGIN IMMEDIATE")
        try:
            for row in old.execute(f"SELECT {names} FROM {table}"):
                try:
                    count += fresh.execute(insert, row).rowcount
                except sqlite3.DatabaseError:
                    continue  # a row damaged into a constraint violation: the others still go
        except sqlite3.DatabaseError:
            pass  # a damaged page ends this table's copy; what came before it is kept
        fresh.execute("COMMIT")
        if count:
            copied[table] = count
    return copied
