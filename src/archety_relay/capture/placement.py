"""Where capture reads from: the saved cursor, and where to resume when chat.db or the state
file was replaced.

The cursor carries the guid and date of its row. A chat.db rewritten to a new file with the same
history (same `_UniqueIdentifier`, same guid at the cursor) keeps it. A really different
database resumes from the rows dated since the cursor's row, less a few minutes, never from
MAX(ROWID): a rebuilt database puts new rows below the old MAX. A state file rebuilt without its
cursor resumes from the damaged file's last write. Delivered guids keep re-read rows from going
out twice.
"""

from __future__ import annotations

import json
from dataclasses import replace

import structlog

from ..chatdb import rows
from ..chatdb.reader import ChatDb
from ..store import Cursor, Store

log = structlog.get_logger("archety_relay.capture")

# A replaced chat.db is read again from this long before the date of the last row seen.
REPLACED_DB_SLACK_SECONDS = 300.0


def resume_since(cursor_date: int | None, now: float, max_age: float) -> float:
    """From when to read a replaced chat.db again: the date of the last row seen, less a few
    minutes (rows are not written in strict date order), and never beyond the message age."""
    seen = rows.unix_seconds(cursor_date)
    start = now if seen is None else min(seen, now)
    return max(start - REPLACED_DB_SLACK_SECONDS, now - max_age)


def _reset_resume_since(recorded: str | None) -> float | None:
    """`resume_since` of the state_reset fact, when a repair could not carry the cursor over."""
    try:
        reset = json.loads(recorded) if recorded else None
    except ValueError:
        return None
    since = reset.get("resume_since") if isinstance(reset, dict) else None
    return float(since) if isinstance(since, (int, float)) else None


class Placement:
    def __init__(self, chatdb: ChatDb, store: Store, max_age: float) -> None:
        self.chatdb = chatdb
        self.store = store
        self.max_age = max_age
        self._fingerprint_generation = -1
        self._fingerprint = ""

    def cursor(self, now: float) -> tuple[Cursor, bool]:
        """The cursor to read after, and whether it was just moved to another database."""
        # Reopen first if the file was replaced: a fingerprint read after the first query of the
        # step would judge the new file by the old one's cursor.
        if self._fingerprint_generation != self.chatdb.current_generation():
            self._fingerprint = self.chatdb.fingerprint()
            self._fingerprint_generation = self.chatdb.generation
        saved = self.store.cursor()
        if saved is None:
            since = _reset_resume_since(self.store.meta().get("state_reset"))
            if since is not None:
                # A damaged state file whose cursor could not be read: resume from the rows
                # dated since its last write, not from MAX(ROWID) (which would skip them).
                cursor = self._resume(
                    max(since - REPLACED_DB_SLACK_SECONDS, now - self.max_age), now
                )
                self.store.set_cursor(cursor, now)
                log.warning("cursor_resumed_after_state_reset", rowid=cursor.rowid)
                return cursor, False
            cursor = self._cursor_at(self.chatdb.max_rowid(), now)
            self.store.set_cursor(cursor, now)
            log.info(
                "cursor_initialised", rowid=cursor.rowid, reason="first_start_no_history_replay"
            )
            return cursor, False
        if saved.fingerprint != self._fingerprint:
            if self._same_history(saved):
                # A new file holding the same database (VACUUM INTO and rename, a migration):
                # the cursor still points at the same row; moving it would drop or repeat rows.
                cursor = replace(saved, fingerprint=self._fingerprint)
                self.store.set_cursor(cursor, now)
                log.info("chatdb_file_replaced_cursor_kept", rowid=saved.rowid)
                return cursor, False
            return self.rebase(saved, now, "chatdb_fingerprint_changed"), True
        return saved, False

    def _same_history(self, saved: Cursor) -> bool:
        """Same `_UniqueIdentifier` and the same message guid at the cursor's ROWID."""
        if saved.fingerprint.partition(":")[2] != self._fingerprint.partition(":")[2]:
            return False
        at = self.chatdb.row_at(saved.rowid) if saved.guid else None
        return at is not None and at[0] == saved.guid

    def _cursor_at(self, rowid: int, now: float, since: float | None = None) -> Cursor:
        """A cursor at `rowid` carrying that row's guid, and its date or the moment `since` it
        stands for (a resumed cursor sits just below the rows dated since then)."""
        at = self.chatdb.row_at(rowid) if rowid > 0 else None
        guid, date = at if at else (None, None)
        if since is not None or date is None:
            date = rows.apple_date(now if since is None else since)
        return Cursor(rowid, self._fingerprint, guid, date)

    def _resume(self, since: float, now: float) -> Cursor:
        """A cursor just below the first row dated at or after `since` (MAX(ROWID) if none)."""
        first = self.chatdb.first_rowid_since(rows.apple_date(since))
        rowid = first - 1 if first is not None else self.chatdb.max_rowid()
        return self._cursor_at(rowid, now, since)

    def rebase(self, saved: Cursor, now: float, reason: str) -> Cursor:
        """A different database: resume from the rows dated since the cursor's row (less a
        little slack), not from MAX(ROWID) — a rebuilt database puts new rows below the old
        MAX. Messages already delivered are left out by the delivered-guid dedupe."""
        since = resume_since(saved.date, now, self.max_age)
        cursor = self._resume(since, now)
        rowid = cursor.rowid
        self.store.set_cursor(cursor, now)
        log.warning(
            "chatdb_replaced_cursor_rebased",
            reason=reason,
            old_rowid=saved.rowid,
            new_rowid=rowid,
            resumed_from_age_s=round(now - since, 1),
            hint="chat.db was replaced (restore, new Mac or rebuild); rows dated since the last "
            "one seen are read again, delivered ones are not sent twice",
        )
        return cursor
