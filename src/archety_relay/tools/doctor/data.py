"""Checks of the databases: Apple's chat.db (Full Disk Access, its WAL), our state file, and
the Mac's Contacts (sender names)."""

from __future__ import annotations

from pathlib import Path

from ... import phones
from ...chatdb.reader import ChatDb
from ...config import Settings
from ...contacts.reader import FILE_NAME, AddressBook
from ...errors import (
    EXIT_CHATDB,
    EXIT_STATE,
    OutboxCorrupt,
    RelayError,
)
from ...macos import interpreter
from ...macos.identity import Identity
from ...store import OUTBOX_FILE, open_store
from .result import FDA_LOCATION, Check


def _fda_fix(who: Identity | None) -> str:
    if who is not None:
        return who.fda_hint() + " (⇧⌘G to type the path)"
    return (
        f"grant Full Disk Access to {interpreter.real_interpreter()} in {FDA_LOCATION} "
        "(⇧⌘G to type the path), then restart the relay"
    )


def chatdb_check(settings: Settings, who: Identity | None = None) -> Check:
    fix = _fda_fix(who)
    try:
        with ChatDb(settings.chat_db) as chatdb:
            top = chatdb.max_rowid()
    except RelayError as exc:
        # Full Disk Access only when the error is about access (chatdb decides which).
        access = "Full Disk Access" in exc.hint or not exc.hint
        return Check(
            "chat.db readable", False, exc.message, fix if access else exc.hint, EXIT_CHATDB
        )
    return Check("chat.db readable", True, f"{settings.chat_db} (MAX(ROWID) {top})")


def wal_check(settings: Settings, who: Identity | None = None) -> Check:
    wal = Path(str(settings.chat_db) + "-wal")
    if not wal.exists():
        return Check("chat.db WAL", True, "no WAL right now (checkpointed)")
    try:
        with open(wal, "rb") as f:
            f.read(32)
    except OSError as exc:
        return Check(
            "chat.db WAL",
            False,
            f"{wal} cannot be read: {exc}",
            _fda_fix(who),
            EXIT_CHATDB,
        )
    return Check("chat.db WAL", True, f"{wal} readable ({wal.stat().st_size} bytes)")


def state_check(settings: Settings) -> Check:
    existed = (settings.state_dir / OUTBOX_FILE).exists()
    try:
        store = open_store(settings.state_dir)
        try:
            stats = store.stats()
        finally:
            store.close()
        probe = settings.state_dir / ".doctor-write-test"
        probe.write_text("ok")
        probe.unlink()
    except (RelayError, OSError) as exc:
        return Check(
            "state directory",
            False,
            f"{settings.state_dir}: {exc}",
            exc.hint
            if isinstance(exc, OutboxCorrupt)  # damaged, not full: run/--once repairs it
            else "make ARCHETY_STATE_DIR writable and free some space",
            EXIT_STATE,
        )
    what = (
        f"queue {stats.depth}, dead letters {stats.dead_letters}"
        if existed
        else "new outbox created"
    )
    return Check("state directory", True, f"{settings.state_dir} writable; {what}")


def contacts_check(settings: Settings, who: Identity | None = None) -> Check:
    """Whether sender names can be read from Contacts. Never fails the doctor: without Contacts
    messages simply go without `sender_name`. Counts only, never a name."""
    name = "Contacts names"
    if not settings.contact_names:
        return Check(name, True, "off (ARCHETY_CONTACT_NAMES=0)", skipped=True)
    region = phones.region_of(settings.persona_phone, settings.default_region)
    found = AddressBook(settings.address_book_dir, region, log_reads=False).availability()
    if found.readable:
        return Check(
            name,
            True,
            f"{found.files} address book file(s) under {settings.address_book_dir}, "
            f"{found.entries} numbers and addresses with a name (region {region})",
        )
    if found.files == 0:
        detail = f"no {FILE_NAME} under {settings.address_book_dir}"
    else:
        detail = f"{found.files} address book file(s), unreadable ({found.problem})"
    return Check(
        name,
        False,
        detail,
        "messages go without sender_name; "
        + _fda_fix(who)
        + " (Full Disk Access covers Contacts), or set ARCHETY_CONTACT_NAMES=0",
        skipped=True,
    )
