"""Capture: new chat.db rows into the outbox, one step at a time. The saved cursor is the truth.

`step(now)` takes wall-clock `now` (message age, how long a row has waited for its chat join).
The cursor moves only in the transaction that stores what it passed, so a crash between
reading and storing just reads the same rows again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog

from . import events, rows
from .arrivals import Arrivals
from .chatdb import ChatDb
from .config import Settings
from .errors import RelayError
from .model import Message, Skipped
from .store import Cursor, Store

log = structlog.get_logger("archety_relay.capture")

# Rows read per transaction: bounds memory during a burst and keeps each read snapshot short.
READ_BATCH = 500
# A row without a chat join whose sender is only in group chats waits this many chat-join waits
# for its join before it is passed: a guess would answer a group's message in a direct chat.
GROUP_JOIN_WAIT_FACTOR = 6
# A replaced chat.db is read again from this long before the date of the last row seen.
REPLACED_DB_SLACK_SECONDS = 300.0


@dataclass
class CaptureResult:
    read: int = 0
    enqueued: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    holding: bool = False  # a row is waiting for its chat join: capture again soon
    events: int = 0  # conversation events stored (reactions, group changes, sent elsewhere)
    rebased: bool = False
    # The Unix time of each enqueued message's own date, for how fast it was noticed.
    dates: list[float] = field(default_factory=list)


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


class Capture:
    def __init__(
        self,
        settings: Settings,
        chatdb: ChatDb,
        store: Store,
        admit: Callable[[Message, float], bytes | Skipped] | None = None,
    ) -> None:
        self.settings = settings
        self.chatdb = chatdb
        self.store = store
        # The message path's one hook (inbound.admit): rules, persona and the chat's context.
        self.admit = admit
        self._held_since: dict[int, float] = {}
        self.arrivals = Arrivals(chatdb, store, settings.max_message_age)
        self._fingerprint_generation = -1
        self._fingerprint = ""

    def _cursor(self, now: float, result: CaptureResult) -> Cursor:
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
                    max(since - REPLACED_DB_SLACK_SECONDS, now - self.settings.max_message_age), now
                )
                self.store.set_cursor(cursor, now)
                log.warning("cursor_resumed_after_state_reset", rowid=cursor.rowid)
                return cursor
            cursor = self._cursor_at(self.chatdb.max_rowid(), now)
            self.store.set_cursor(cursor, now)
            log.info(
                "cursor_initialised", rowid=cursor.rowid, reason="first_start_no_history_replay"
            )
            return cursor
        if saved.fingerprint != self._fingerprint:
            if self._same_history(saved):
                # A new file holding the same database (VACUUM INTO and rename, a migration):
                # the cursor still points at the same row; moving it would drop or repeat rows.
                cursor = replace(saved, fingerprint=self._fingerprint)
                self.store.set_cursor(cursor, now)
                log.info("chatdb_file_replaced_cursor_kept", rowid=saved.rowid)
                return cursor
            return self._rebase(saved, now, result, "chatdb_fingerprint_changed")
        return saved

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

    def _rebase(self, saved: Cursor, now: float, result: CaptureResult, reason: str) -> Cursor:
        """A different database: resume from the rows dated since the cursor's row (less a
        little slack), not from MAX(ROWID) — a rebuilt database puts new rows below the old
        MAX. Messages already delivered are left out by the delivered-guid dedupe."""
        since = resume_since(saved.date, now, self.settings.max_message_age)
        cursor = self._resume(since, now)
        rowid = cursor.rowid
        self.store.set_cursor(cursor, now)
        self._held_since.clear()
        result.rebased = True
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

    def step(self, now: float) -> CaptureResult:
        """Move every new chat.db row into the outbox (or past it, with a reason)."""
        result = CaptureResult()
        cursor = self._cursor(now, result)
        while True:
            batch = self.chatdb.read_after(cursor.rowid, READ_BATCH)
            if not batch:
                # Only an empty read can mean a reset database below the cursor; asking
                # MAX(ROWID) on every step would add a transaction to the hot path.
                if not result.read and self.chatdb.max_rowid() < cursor.rowid:
                    self._rebase(cursor, now, result, "chatdb_max_rowid_below_cursor")
                break
            result.read += len(batch)
            self.arrivals.note_batch(batch, now)
            items: list[tuple[str, int, bytes]] = []
            found: list[events.ChatEvent] = []
            skipped = result.skipped.copy()
            last, last_row = cursor.rowid, None
            for raw in batch:
                settled = self._settle(raw, now)
                if settled is None:
                    result.holding = True
                    break
                outcome = settled if isinstance(settled, Skipped) else self._convert(settled, now)
                if isinstance(outcome, Skipped):
                    result.skipped[outcome.reason] += 1
                    if (event := self._event(raw, now)) is not None:
                        found.append(event)
                    log.debug(
                        "row_skipped", rowid=outcome.rowid, guid=outcome.guid, reason=outcome.reason
                    )
                else:
                    items.append((outcome[0].message_guid, outcome[0].rowid, outcome[1]))
                    if (date := rows.unix_time(raw.date)) is not None:
                        result.dates.append(date)
                    _log_captured(outcome[0])
                last, last_row = raw.rowid, raw
            if last_row is not None:
                cursor = Cursor(last, cursor.fingerprint, last_row.guid, last_row.date)
                backfilled = result.skipped["backfill"] - skipped["backfill"]
                result.enqueued += self.store.enqueue(
                    items, cursor, time.time(), found, {"backfill": backfilled}
                )
                result.events += len(found)
                for rowid in [r for r in self._held_since if r <= last]:
                    del self._held_since[rowid]
            if result.holding or len(batch) < READ_BATCH:
                break
        return result

    def _convert(self, raw: rows.RawMessage, now: float) -> tuple[Message, bytes] | Skipped:
        """A row becomes a message and its frozen body, or a reason; never an exception.

        One row that trips an unforeseen case must not hold every row behind it: it is skipped
        loudly (the error's type only: its text could quote the message).
        """
        try:
            outcome = rows.to_message(raw, now, self.settings.max_message_age)
            if isinstance(outcome, Skipped):
                return outcome
            extra = self.arrivals.judge(raw, outcome, now)
            if isinstance(extra, Skipped):
                return extra
            outcome = replace(outcome, **extra)
            if self.admit is None:
                return outcome, outcome.frozen_body(self.settings.persona_fields())
        except RelayError:  # chat.db or the state database failed: retry the step, skip nothing
            raise
        except Exception as exc:
            log.warning(
                "row_unreadable", rowid=raw.rowid, guid=raw.guid, error_type=type(exc).__name__
            )
            return Skipped(raw.rowid, raw.guid, "unreadable")
        # Outside the catch-all: a state database error in the hook stops the step (it is
        # retried), it must not skip the row.
        admitted = self.admit(outcome, now)
        return admitted if isinstance(admitted, Skipped) else (outcome, admitted)

    def _event(self, raw: rows.RawMessage, now: float) -> events.ChatEvent | None:
        """The conversation event a passed row stands for; an unforeseen case costs the event,
        never the rows behind it."""
        try:
            event = self.arrivals.event_for(raw, now)
        except RelayError:  # an I/O failure: the step is retried, the event is not lost
            raise
        except Exception as exc:
            log.warning(
                "row_event_unreadable",
                rowid=raw.rowid,
                guid=raw.guid,
                error_type=type(exc).__name__,
            )
            return None
        if event is not None:
            log.info(
                "conversation_event",
                event_type=event.event_type,
                chat_guid=event.chat_guid,
                message_guid=event.message_guid,
            )
        return event

    def _settle(self, raw: rows.RawMessage, now: float) -> rows.RawMessage | Skipped | None:
        """The row as it can be forwarded, a reason to pass it, or None: hold it (and every row
        behind it, to keep their order) a little longer.

        Messages writes a row, then its chat join, text or attachments in separate steps (RCS
        rows may get their join late or never): a row with no chat, or with nothing in it yet,
        waits ARCHETY_CHAT_JOIN_WAIT before it is judged as it stands.
        """
        reason = rows.skip_reason(raw, now, self.settings.max_message_age)
        # Reactions, group changes and the persona's own rows become events about a chat:
        # they wait for their chat join like a message, but no text is expected of them.
        if reason is not None and (raw.chats or not events.wants_chat(raw)):
            return raw
        if raw.chats and not rows.is_empty(raw):
            return raw
        waited = self._waited(raw.rowid, now)
        if waited < self.settings.chat_join_wait:
            return None
        if not raw.chats and raw.sender:
            return self._place_orphan(raw, waited)
        if rows.is_empty(raw):
            log.warning("row_empty_after_wait", rowid=raw.rowid, guid=raw.guid, waited_s=waited)
        return raw

    def _place_orphan(
        self, raw: rows.RawMessage, waited: float
    ) -> rows.RawMessage | Skipped | None:
        """A row whose chat join never came goes to a chat its sender is really in, never to one
        made up beside a real one (#12), nor to a direct chat when the sender is only known
        from group chats: that row is held longer, then passed with a warning."""
        assert raw.sender is not None
        found, any_form = self.chatdb.chats_of_handle(raw.sender)
        chat = rows.chat_for_orphan(raw, found, any_form)
        if chat is None:
            if waited < self.settings.chat_join_wait * GROUP_JOIN_WAIT_FACTOR:
                return None
            log.warning("group_chat_join_missing", rowid=raw.rowid, guid=raw.guid, waited_s=waited)
            return Skipped(raw.rowid, raw.guid, "group_chat_join_missing")
        log.warning(
            "chat_join_missing",
            rowid=raw.rowid,
            guid=raw.guid,
            waited_s=waited,
            chat_guid=chat.guid,
            found_in_chatdb=chat.rowid >= 0,
        )
        return replace(raw, chats=(chat,))

    def _waited(self, rowid: int, now: float) -> float:
        first_seen = self._held_since.setdefault(rowid, now)
        if first_seen > now:  # the clock went backwards: start the wait again
            self._held_since[rowid] = first_seen = now
        return round(now - first_seen, 2)


def _log_captured(message: Message) -> None:
    log.debug(
        "message_captured",
        message_guid=message.message_guid,
        rowid=message.rowid,
        chat_guid=message.chat_guid,
        sender=message.sender,
        text=message.text,
        attachments=len(message.attachments),
    )
