"""`backfill`: deliberately replay recent history that the normal path will never send.

Only rows at or behind the saved cursor are considered (rows after it are the normal path's),
the forwarding rules apply with the backfill window as the age limit, and guids already queued,
dead-lettered, recently delivered or held back by a filter rule are left out, so a backfill never
sends a message twice nor one the backend's rules held back; a window longer than that memory is
refused. What is sent goes through the live path's `admit` (rules, persona, the chat's context
and plan), so it is the body the live relay would have queued.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..chatdb.reader import ChatDb
from ..chatdb.rows import apple_date, to_message
from ..errors import ConfigError
from ..model import Message, Skipped
from ..store import DELIVERED_MEMORY_SECONDS, Store
from .new_rows import READ_BATCH


@dataclass
class BackfillPlan:
    messages: list[Message] = field(default_factory=list)
    already_known: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    # Never seen by the live path, and a filter rule holds them back now: not sent, but their
    # `message_filtered` is recorded as it would have been live.
    held_back: list[Message] = field(default_factory=list)


def check_window(since_seconds: float) -> None:
    """Refuse a window reaching past what the relay remembers delivering.

    Delivered guids are kept DELIVERED_MEMORY_SECONDS; a message dated inside that window was
    delivered inside it too, so the dedupe covers it. An older one may have been delivered and
    forgotten: replaying it would send it twice, which backfill promises never to do.
    """
    if since_seconds > DELIVERED_MEMORY_SECONDS:
        days = DELIVERED_MEMORY_SECONDS // 86400
        raise ConfigError(
            f"--since reaches further back than the {days} days of deliveries the relay "
            "remembers; older messages may already have been sent",
            hint=f"Use --since {days}d or less.",
        )


def plan(
    chatdb: ChatDb,
    store: Store,
    since_seconds: float,
    now: float,
    holds_back: Callable[[Message, float], bool] = lambda message, now: False,
) -> BackfillPlan:
    check_window(since_seconds)
    result = BackfillPlan()
    start = chatdb.first_rowid_since(apple_date(now - since_seconds))
    cursor = store.cursor()
    end = cursor.rowid if cursor else chatdb.max_rowid()
    if start is None or start > end:
        return result
    position = start - 1
    while position < end:
        batch = [row for row in chatdb.read_after(position, READ_BATCH) if row.rowid <= end]
        if not batch:
            break
        position = batch[-1].rowid
        found = []
        for raw in batch:
            outcome = to_message(raw, now, since_seconds)
            if isinstance(outcome, Skipped):
                result.skipped[outcome.reason] += 1
            else:
                found.append(outcome)
        known = store.known(m.message_guid for m in found)
        result.already_known += len(known)
        for message in (m for m in found if m.message_guid not in known):
            (result.held_back if holds_back(message, now) else result.messages).append(message)
    return result


def enqueue(
    store: Store,
    backfill: BackfillPlan,
    now: float,
    admit: Callable[[Message, float], bytes | Skipped],
) -> list[str]:
    """Queue the plan's messages, each through `admit` (the live path's rules, persona and chat
    context); returns the guids queued."""
    items = []
    for message in backfill.messages + backfill.held_back:
        body = admit(message, now)
        if not isinstance(body, Skipped):
            items.append((message.message_guid, message.rowid, body))
    store.enqueue(items, None, now)
    return [guid for guid, _rowid, _body in items]
