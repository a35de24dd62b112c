"""What happened to the persona's messages after they were sent: delivered, or failed late.

Messages marks a sent row delivered (`is_delivered`, `date_delivered`) when the other side got
it, and can set `error` minutes after the send went out (22: the number is no longer on
iMessage). These are UPDATEs a ROWID cursor never sees, on unindexed columns; so `step(now)`
reads the persona's ordinary rows dated within WINDOW_SECONDS through `message_idx_date` (the
cost follows one day of the persona's sends, not chat.db's size) and compares each with the
state stored for it (`store.outcomes`): a row seen sent and now delivered is one
`message_delivered`, a row seen sent (error 0) and now failing is one `message_not_delivered`.

A row seen for the first time already failing was never confirmed sent (the send path reports
its own `message_failed`), so it is only recorded; a row that was there before the watch first
ran (an upgrade, a first start) is recorded without an event, as history.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import structlog

from ..chatdb.reader import ChatDb, OwnSend
from ..chatdb.rows import apple_date, unix_seconds
from ..model import ChatEvent, utc_iso
from ..store import Store

log = structlog.get_logger("archety_relay.outcomes")

# Receipts and late failures come within minutes to hours; a day covers a recipient's phone
# that was off overnight.
WINDOW_SECONDS = 24 * 3600
PRUNE_INTERVAL_SECONDS = 600.0

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

# message.error codes public evidence explains. AirMessage's server maps them in
# `mapMessageErrorCode` (airmessage/airmessage-server, DatabaseConverter: 3 → network,
# 22 → unregistered), and BlueBubbles' client shows 22 as "The recipient is not registered with
# iMessage!". Any other code is reported as error_<n>. Not checked on a real Mac.
ERROR_REASONS = {3: "network_error", 22: "recipient_unregistered"}


def reason(error_code: int) -> str:
    return ERROR_REASONS.get(error_code, f"error_{error_code}")


@dataclass(frozen=True)
class Decision:
    state: str
    event: str | None = None  # "message_delivered" | "message_not_delivered" | None


def decide(before: str | None, row: OwnSend, history: bool) -> Decision:
    """The stored state `before` (None: first sight) and the row now → the new state and the
    event it stands for. `history`: the row predates the watch, so nothing is reported."""
    if row.error:
        if before in (PENDING, DELIVERED):
            return Decision(FAILED, "message_not_delivered")
        return Decision(FAILED)
    if row.delivered:
        if before == PENDING or (before is None and not history):
            return Decision(DELIVERED, "message_delivered")
        return Decision(before or DELIVERED)
    return Decision(before or PENDING)


def outcome_event(kind: str, row: OwnSend, chat_guid: str | None) -> ChatEvent:
    details: dict[str, Any]
    if kind == "message_delivered":
        at = unix_seconds(row.date_delivered) if row.date_delivered else None
        details = {"delivered_at": utc_iso(at) if at else None}
    else:
        details = {"error_code": row.error, "reason": reason(row.error)}
    return ChatEvent(kind, row.guid, chat_guid, row.guid, details)


class Outcomes:
    def __init__(self, chatdb: ChatDb, store: Store) -> None:
        self.chatdb = chatdb
        self.store = store
        self._states: dict[str, str] | None = None  # the stored states, mirrored
        self._since: int | None = None  # Apple date the watch first ran (older rows: history)
        self._pruned_at = float("-inf")

    def step(self, now: float) -> Counter[str]:
        """Look at a day of the persona's sends once; returns the events found, by type
        (each stored once: a crash between the read and the write finds them again)."""
        window = apple_date(now - WINDOW_SECONDS)
        if self._states is None or self._since is None:
            self._since = self.store.outcomes_since(apple_date(now))
            self._states = self.store.sent_states(window)
        rows = self.chatdb.sent_since(window)
        changed: list[tuple[OwnSend, str]] = []
        found: list[tuple[OwnSend, str]] = []
        for row in rows:
            before = self._states.get(row.guid)
            decision = decide(before, row, history=row.date < self._since)
            if decision.state != before:
                changed.append((row, decision.state))
            if decision.event:
                found.append((row, decision.event))
        kinds: Counter[str] = Counter(kind for _, kind in found)
        if changed:
            chats = self.chatdb.chat_guids_of([row.rowid for row, _ in found]) if found else {}
            events = [outcome_event(kind, row, chats.get(row.rowid)) for row, kind in found]
            self.store.record_outcomes(
                [(row.guid, row.rowid, row.date, state, row.error) for row, state in changed],
                events,
                now,
            )
            for row, state in changed:
                self._states[row.guid] = state
            for event in events:
                log.info(
                    "delivery_outcome",
                    event_type=event.event_type,
                    message_guid=event.message_guid,
                    chat_guid=event.chat_guid,
                    **({"reason": event.details["reason"]} if "reason" in event.details else {}),
                )
        if now - self._pruned_at >= PRUNE_INTERVAL_SECONDS:
            self._pruned_at = now
            self.store.prune_outcomes(window)
            current = {r.guid for r in rows}
            self._states = {g: s for g, s in self._states.items() if g in current}
        return kinds
