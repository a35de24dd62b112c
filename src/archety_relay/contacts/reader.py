"""The Mac's Contacts, read only: the name the owner gave a phone number or e-mail address.

The only code that touches the address book. Contacts keeps one SQLite file per account under
`~/Library/Application Support/AddressBook/` (`AddressBook-v22.abcddb` there and in each
`Sources/<uuid>/`); a card is a `ZABCDRECORD` row (first, last, organization, nickname), its
numbers `ZABCDPHONENUMBER.ZFULLNUMBER` as typed and its addresses `ZABCDEMAILADDRESS.ZADDRESS`,
both joined on `ZOWNER` (openclaw issue #68731; ../shared/notes/chatdb-events.md §5). Not
checked against a real Mac here.

Rules, as for chat.db: opened read-only (`mode=ro`), one short read per file, nothing kept
open. Every file is read into one index {E.164 number | lowercased e-mail → name} and read
again only when a file changes (its size, mtime or inode; looked at most every
`RECHECK_SECONDS`), so a lookup costs a dictionary access. Names are personal data: they go
into no log line at info or above (only counts do).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from .. import phones

log = structlog.get_logger("archety_relay.contacts")

DEFAULT_DIR = "~/Library/Application Support/AddressBook"
FILE_NAME = "AddressBook-v22.abcddb"
# Changes to Contacts are looked for at most this often (a stat of each file).
RECHECK_SECONDS = 5.0

_CARDS_SQL = """
SELECT r.Z_PK, r.ZFIRSTNAME, r.ZLASTNAME, r.ZORGANIZATION, r.ZNICKNAME FROM ZABCDRECORD AS r
"""
_PHONES_SQL = "SELECT ZOWNER, ZFULLNUMBER FROM ZABCDPHONENUMBER WHERE ZFULLNUMBER IS NOT NULL"
_EMAILS_SQL = "SELECT ZOWNER, ZADDRESS FROM ZABCDEMAILADDRESS WHERE ZADDRESS IS NOT NULL"


def card_name(
    first: str | None, last: str | None, organization: str | None, nickname: str | None
) -> str | None:
    """The name Contacts shows for a card: first and last, else the organization, else the
    nickname."""
    person = " ".join(p.strip() for p in (first, last) if isinstance(p, str) and p.strip())
    for candidate in (person, organization, nickname):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return None


def find_files(root: Path) -> list[Path]:
    """Every address book file: the one at the top and one per account source."""
    found = [root / FILE_NAME] if (root / FILE_NAME).is_file() else []
    sources = root / "Sources"
    if sources.is_dir():
        found += sorted(p for p in sources.glob(f"*/{FILE_NAME}") if p.is_file())
    return found


def read_file(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]], dict[int, str]]:
    """(phones, emails, names by card) of one file, in one short read-only transaction."""
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = 1")
        conn.execute("BEGIN")
        try:
            cards = conn.execute(_CARDS_SQL).fetchall()
            numbers = conn.execute(_PHONES_SQL).fetchall()
            emails = conn.execute(_EMAILS_SQL).fetchall()
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()
    names = {}
    for pk, first, last, org, nick in cards:
        name = card_name(first, last, org, nick)
        if name is not None:
            names[int(pk)] = name
    return (
        [(int(o), str(n)) for o, n in numbers if o is not None],
        [(int(o), str(a)) for o, a in emails if o is not None],
        names,
    )


def build_index(
    files: Iterable[tuple[list[tuple[int, str]], list[tuple[int, str]], dict[int, str]]],
    region: str,
) -> dict[str, str]:
    """{E.164 | lowercased e-mail → name}; of two cards with one number, the first file's."""
    index: dict[str, str] = {}
    for numbers, emails, names in files:
        for owner, typed in numbers:
            name = names.get(owner)
            key = phones.to_e164(typed, region)
            if name and key:
                index.setdefault(key, name)
        for owner, address in emails:
            name = names.get(owner)
            if name and address.strip():
                index.setdefault(address.strip().lower(), name)
    return index


@dataclass(frozen=True)
class Availability:
    """What doctor says about Contacts."""

    readable: bool
    files: int
    entries: int
    problem: str | None = None


class AddressBook:
    """The owner's contacts as {handle → name}, re-read when a file changes."""

    def __init__(
        self,
        root: Path,
        region: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_reads: bool = True,
    ) -> None:
        self._log_reads = log_reads  # doctor prints its own line instead
        self.root = root
        self.region = region
        self._clock = clock
        self._lock = threading.Lock()
        self._index: dict[str, str] = {}
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._checked_at: float | None = None
        self.problem: str | None = None

    def name_for(self, handle: str | None) -> str | None:
        """The card's name for a chat.db handle (E.164 number or e-mail), or None."""
        if not handle:
            return None
        with self._lock:
            self._refresh()
            if not self._index:
                return None
            return self._index.get(_handle_key(handle, self.region))

    def names_for(self, handles: Iterable[str]) -> dict[str, str]:
        found = {}
        for handle in handles:
            name = self.name_for(handle)
            if name is not None:
                found[handle] = name
        return found

    def availability(self) -> Availability:
        with self._lock:
            self._checked_at = None
            self._refresh()
            files = len(self._signature or ())
            return Availability(
                self.problem is None and files > 0, files, len(self._index), self.problem
            )

    def _refresh(self) -> None:
        now = self._clock()
        if self._checked_at is not None and 0 <= now - self._checked_at < RECHECK_SECONDS:
            return
        self._checked_at = now
        files = find_files(self.root)
        signature = tuple(_stat(p) for p in files)
        if signature == self._signature:
            return
        started = time.monotonic()
        read = []
        problem = None
        for path in files:
            try:
                read.append(read_file(path))
            except (sqlite3.Error, OSError) as exc:
                problem = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        self._index = build_index(read, self.region)
        self._signature = signature
        self.problem = problem
        if not self._log_reads:
            return
        log.info(
            "contacts_read",
            files=len(files),
            entries=len(self._index),
            unreadable=problem,
            ms=round((time.monotonic() - started) * 1000, 1),
        )


@functools.lru_cache(maxsize=4096)
def _handle_key(handle: str, region: str) -> str:
    """A handle's lookup key, parsed once: the same people write again and again."""
    return phones.handle_key(handle, region)


def _stat(path: Path) -> tuple[str, int, int, int]:
    """A file and its WAL: Contacts commits to the -wal file first."""
    sizes = []
    for candidate in (path, path.with_name(path.name + "-wal")):
        try:
            st = os.stat(candidate)
            sizes += [st.st_size, st.st_mtime_ns, st.st_ino]
        except OSError:
            sizes += [0, 0, 0]
    return (str(path), sizes[0] + sizes[3], sizes[1] + sizes[4], sizes[2])
