"""Capture: new chat.db rows into the outbox, one step at a time. The saved cursor is the truth.

`step(now)` takes wall-clock `now` (message age, how long a row has waited for its chat join).
The cursor moves only in the transaction that stores what it passed, so a crash between
reading and storing just reads the same rows again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from ..chatdb import rows
from ..chatdb.reader import ChatDb
from ..config import Settings
from ..errors import RelayError
from ..model import Fingerprint, Message, Skipped
from ..store import Cursor, Store
from . import events
from .arrivals import Arrivals
from .changes import WINDOW_SECONDS
from .placement import Placement

log = structlog.get_logger("archety_relay.capture")

# Rows read per transaction: bounds memory during a burst and keeps each read snapshot short.
READ_BATCH = 500
# A row without a chat join whose sender is only in group chats waits this many chat-join waits
# for its join before it is passed: a guess would answer a group's message in a direct chat.
GROUP_JOIN_WAIT_FACTOR = 6
# A person's message passed without posting is a `message_skipped` event of its own, up to
# this many in one step; the rest of the step's are counted in one summary event.
SKIP_EVENTS_PER_STEP = 50


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
        # The names Contacts gives the sender and a group's members (set by the relay when
        # ARCHETY_CONTACT_NAMES is on): `sender_name`, `participant_names`.
        self.names: Callable[[Message], Mapping[str, Any]] = lambda message: {}
        self._held_since: dict[int, float] = {}
        self.arrivals = Arrivals(chatdb, store, settings.max_message_age)
        self.placement = Placement(chatdb, store, settings.max_message_age)
        # The ROWID capture has passed: the change watch takes no first look beyond it, so the
        # first fingerprint of a row is the one capture stored with its message (None: not yet).
        self.captured_to: int | None = None

    def step(self, now: float) -> CaptureResult:
        """Move every new chat.db row into the outbox (or past it, with a reason)."""
        result = CaptureResult()
        cursor, rebased = self.placement.cursor(now)
        if rebased:
            self._rebased(result)
        reported = 0  # message_skipped events of their own in this step
        while True:
            batch = self.chatdb.read_after(cursor.rowid, READ_BATCH)
            if not batch:
                # Only an empty read can mean a reset database below the cursor; asking
                # MAX(ROWID) on every step would add a transaction to the hot path.
                if not result.read and self.chatdb.max_rowid() < cursor.rowid:
                    self.placement.rebase(cursor, now, "chatdb_max_rowid_below_cursor")
                    self._rebased(result)
                break
            result.read += len(batch)
            self.arrivals.note_batch(batch, now)
            items: list[tuple[str, int, bytes]] = []
            found: list[events.ChatEvent] = []
            fingerprints: list[Fingerprint] = []
            passed_over: list[tuple[rows.RawMessage, str]] = []
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
                    elif events.reports_skip(raw, outcome.reason):
                        passed_over.append((raw, outcome.reason))
                    log.debug(
                        "row_skipped", rowid=outcome.rowid, guid=outcome.guid, reason=outcome.reason
                    )
                else:
                    items.append((outcome[0].message_guid, outcome[0].rowid, outcome[1]))
                    if (date := rows.unix_time(raw.date)) is not None:
                        result.dates.append(date)
                    _log_captured(outcome[0])
                if (fp := _fingerprint(raw, now)) is not None:
                    fingerprints.append(fp)
                last, last_row = raw.rowid, raw
            room = max(0, SKIP_EVENTS_PER_STEP - reported)
            found += [events.skipped_event(r, reason, now) for r, reason in passed_over[:room]]
            if passed_over[room:]:
                found.append(events.skipped_summary(passed_over[room:]))
            reported += len(passed_over[:room])
            if last_row is not None:
                cursor = Cursor(last, cursor.fingerprint, last_row.guid, last_row.date)
                backfilled = result.skipped["backfill"] - skipped["backfill"]
                result.enqueued += self.store.enqueue(
                    items, cursor, time.time(), found, {"backfill": backfilled}, fingerprints
                )
                result.events += len(found)
                for rowid in [r for r in self._held_since if r <= last]:
                    del self._held_since[rowid]
            if result.holding or len(batch) < READ_BATCH:
                break
        self.captured_to = cursor.rowid
        return result

    def _rebased(self, result: CaptureResult) -> None:
        """Rows held in the old database mean nothing in the new one."""
        self._held_since.clear()
        result.rebased = True

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
            outcome = replace(outcome, **extra, **self.names(outcome))
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
        if reason is None and self.arrivals.gathering(raw, now):
            return None  # an old row: let the rest of a back-fill bunch arrive before judging
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


def _fingerprint(raw: rows.RawMessage, now: float) -> Fingerprint | None:
    """The row's fingerprint as capture read it, for rows the change watch will look at (its
    recent window); None for the others, or for a row too odd to fingerprint (the watch warns
    about that one at its own look)."""
    if raw.watch is None or raw.date is None or raw.date < rows.apple_date(now - WINDOW_SECONDS):
        return None
    try:
        return events.fingerprint(raw.watch)
    except Exception:
        return None


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
