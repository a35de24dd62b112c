"""In-place changes: edits, unsends and read receipts, found by re-reading a recent window.

These are UPDATEs of existing rows, which a ROWID cursor never sees, and the columns they touch
(`date_edited`, `date_read`, `is_empty`) have no index. Apple bounds the problem instead: an
edit is allowed within 15 minutes of sending, an unsend within 2. So each time chat.db changes,
`step(now)` reads the rows dated within `WINDOW_SECONDS` (by `message_idx_date`) plus the
persona's unread messages of the last `UNREAD_WATCH_SECONDS`, compares each row's fingerprint
with the stored one (`store.watch`) and stores what changed, with its events, in one
transaction. The cost follows the window, not the size of chat.db.

A row's first fingerprint is normally capture's, stored with the message read from the same
row (so an edit made a millisecond after capture is still an edit); the watch never looks at a
row capture has not passed yet. A row it finds with no fingerprint at all (captured by an older
version, or behind a rebased cursor) is only fingerprinted: the message already carried it. No text is kept: the text
before an edit comes from Apple's own edit history in `message_summary_info`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from ..chatdb.reader import ChatDb
from ..chatdb.rows import WatchedRow, apple_date
from ..model import ChatEvent, Fingerprint
from ..store import Store
from ..store.watch import UNREAD_WATCH_LIMIT
from . import events

log = structlog.get_logger("archety_relay.changes")

# Longer than Apple's 15-minute edit limit, plus slack for a late sync from another device.
WINDOW_SECONDS = 20 * 60
# The persona's messages are watched for a read receipt this long after they were sent.
UNREAD_WATCH_SECONDS = 2 * 86400
PRUNE_INTERVAL_SECONDS = 60.0


@dataclass
class ChangesResult:
    watched: int = 0
    emitted: int = 0
    found: Counter[str] = field(default_factory=Counter)


class Changes:
    def __init__(
        self,
        chatdb: ChatDb,
        store: Store,
        captured_to: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.chatdb = chatdb
        self.store = store
        # The ROWID capture has passed (None: no limit). A row beyond it is capture's to look
        # at first: its fingerprint is stored with the message it becomes, so an edit made
        # between capture and this watch is compared with what was sent (the quick-edit race).
        self.captured_to = captured_to
        # The stored fingerprints, mirrored: an unchanged window costs no state-db query.
        self._known: dict[str, Fingerprint] = {}
        self._pruned_at = float("-inf")
        self._loaded = False
        # Rows that could not be fingerprinted, warned about once while they stay in the window.
        self._unreadable: set[str] = set()

    def step(self, now: float) -> ChangesResult:
        """Look at the recent window once; store (and return the count of) what changed."""
        result = ChangesResult()
        since = apple_date(now - UNREAD_WATCH_SECONDS)
        if self._loaded:  # the mirror holds every watched row since the first look
            unread = [
                f.rowid
                for f in self._known.values()
                if f.from_me and not f.read_at and f.date >= since
            ]
            unread = unread if len(unread) <= UNREAD_WATCH_LIMIT else self.store.unread_own(since)
        else:
            unread = self.store.unread_own(since)
            self._loaded = True
        watched = self.chatdb.watch_window(apple_date(now - WINDOW_SECONDS), unread)
        result.watched = len(watched)
        current = self._fingerprints(watched)
        if (limit := self.captured_to()) is not None:
            current = {g: v for g, v in current.items() if v[0].rowid <= limit}
        unknown = [g for g in current if g not in self._known]
        if unknown:
            self._known.update(self.store.watched(unknown))
        new = [g for g in current if g not in self._known]
        moved = [g for g, (_w, fp) in current.items() if g in self._known and self._known[g] != fp]
        if new or moved:
            self._record(current, new, moved, now, result)
        if now - self._pruned_at >= PRUNE_INTERVAL_SECONDS:
            self._pruned_at = now
            self.store.prune_watched(
                apple_date(now - WINDOW_SECONDS), apple_date(now - UNREAD_WATCH_SECONDS)
            )
            self._known = {g: fp for g, fp in self._known.items() if g in current}
            self._unreadable &= {w.guid for w in watched}
        return result

    def _fingerprints(self, watched: list[WatchedRow]) -> dict[str, tuple[WatchedRow, Fingerprint]]:
        """Each row's fingerprint; a row that trips an unforeseen case is left out (and warned
        about once) instead of stopping every edit, unsend and read behind it."""
        current: dict[str, tuple[WatchedRow, Fingerprint]] = {}
        for row in watched:
            try:
                current[row.guid] = (row, events.fingerprint(row))
            except Exception as exc:
                if row.guid not in self._unreadable:
                    self._unreadable.add(row.guid)
                    log.warning(
                        "row_unreadable",
                        rowid=row.rowid,
                        guid=row.guid,
                        error_type=type(exc).__name__,  # its text could quote the row
                        step="changes",
                    )
        return current

    def _record(
        self,
        current: dict[str, tuple[WatchedRow, Fingerprint]],
        new: list[str],
        moved: list[str],
        now: float,
        result: ChangesResult,
    ) -> None:
        """Build the events of what changed (reading those rows in full), store them all."""
        found: list[ChatEvent] = []
        kinds = {g: events.changes(self._known[g], current[g][1]) for g in moved}
        eventful = [current[g][1].rowid for g in moved if kinds[g]]
        full = {r.guid: r for r in self.chatdb.read_rowids(eventful) if r.guid}
        for guid in moved:
            watched, fp = current[guid]
            row = full.get(guid)
            if kinds[guid] and row is None:  # gone between the two reads: look again next time
                continue
            for kind in kinds[guid]:
                assert row is not None
                try:
                    found.append(
                        events.change_event(
                            kind, self._known[guid], fp, row, watched.message_summary_info
                        )
                    )
                except Exception as exc:  # one odd row must not stop the others' events
                    log.warning(
                        "row_unreadable",
                        rowid=row.rowid,
                        guid=guid,
                        error_type=type(exc).__name__,
                        step="changes",
                        event_type=kind,
                    )
        records = [current[g][1] for g in new] + [
            current[g][1] for g in moved if not kinds[g] or g in full
        ]
        result.emitted = self.store.record_watch(records, found, now)
        for fp in records:
            self._known[fp.guid] = fp
        for event in found:
            result.found[event.event_type] += 1
            log.info(
                "conversation_event",
                event_type=event.event_type,
                chat_guid=event.chat_guid,
                message_guid=event.message_guid,
            )
