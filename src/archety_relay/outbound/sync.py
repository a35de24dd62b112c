"""Heartbeat and `/edge/sync`: report status and events, carry out what the backend answers.

`sync_step(now)` is one round trip: the status and pending events go out; acknowledgements,
interval changes and commands come back and are applied, in that order, so a command that
cannot be carried out never costs the acknowledgements or the intervals. The driver (daemon's
timer thread, `--once`) decides when; `intervals` is what it reads to decide.

The request has exactly the integration document's fields (`status` is a string there: a
backend model typed that way rejects an object), plus `last_command_id` and the figures under
`stats`:

    {"edge_agent_id", "version", "capabilities": [...], "events": [...],
     "status": "active" | "paused" | "degraded", "last_sync": ISO 8601,
     "last_command_id": "c-…" | null, "stats": {"queue_depth", ...}}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import structlog

from .. import __version__
from ..backend import commands
from ..backend.client import MAX_BODY_BYTES, Backend
from ..backend.commands import SetRule
from ..capture.inbound import Inbound
from ..config import Settings
from ..model import utc_iso
from ..policy import HttpOutcome
from ..store import Store
from .dispatch import Outbound

log = structlog.get_logger("archety_relay.sync")

# The integration document's names first, then what this relay can do besides.
CAPABILITIES = (
    "schedule",
    "filter",
    "local_cache",
    "message_relay",
    "attributed_body",
    "attachments_metadata",
    "idempotency_key",
    "replies",
    "send_message",
    "schedule_message",
    "cancel_message",
    "list_scheduled",
    "send_message_now",
    "cancel_scheduled",
    "set_rule",
    "auto_reply",
    "context_update",
    "context_reset",
    "update_plan",
    "emit_event",
    "photo_upload",
    "upload_retry",
)


# What one sync may carry in events. One event with a long text (an edit of a pasted essay, a
# message sent from the persona's phone) made every sync body too large for the backend or its
# proxy (413), so no sync went through and no command arrived while the event waited.
MAX_EVENTS_BYTES = 256 * 1024
MAX_EVENT_TEXT_CHARS = 16 * 1024
TRUNCATED = "…[truncated]"
# A commands_refused event names this many of the refused command ids (and counts them all).
REFUSED_IDS_LISTED = 50


def fit_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of one sync, each string value cut to MAX_EVENT_TEXT_CHARS and each event
    within MAX_EVENTS_BYTES (see bounded), as many as fit in MAX_EVENTS_BYTES (always the
    first). Those left out are offered again by the next pages."""
    fitted: list[dict[str, Any]] = []
    size = 0
    for event in events:
        short = bounded(event)
        length = _size(short)
        if fitted and size + length > MAX_EVENTS_BYTES:
            break
        fitted.append(short)
        size += length
    return fitted


def bounded(event: dict[str, Any], limit: int = MAX_EVENTS_BYTES) -> dict[str, Any]:
    """The event with long strings cut; if it is still larger than `limit`, strings and then
    lists are cut shorter until it fits (marked `truncated: true`), and as a last resort its
    nested values are dropped, keeping the top-level ids. The first event of a page always
    goes out, so one huge event (a list of every schedule) made every sync too large."""
    ids = {k: v for k, v in event.items() if k in _IDS}
    rest = {k: v for k, v in event.items() if k not in _IDS}
    short = {**_shorten(rest, MAX_EVENT_TEXT_CHARS, None), **ids}
    if _size(short) <= limit:
        return short
    for chars, items in ((2048, None), (256, 100), (64, 10), (16, 1)):
        short = {**_shorten(rest, chars, items), **ids, "truncated": True}
        if _size(short) <= limit:
            return short
    scalars = {k: v for k, v in rest.items() if not isinstance(v, (dict, list))}
    return {**_shorten(scalars, 16, 0), **ids, "truncated": True}


# Never cut: what the backend acknowledges an event by and matches it with.
_IDS = frozenset({"event_id", "event_type", "timestamp", "command_id"})


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def _shorten(value: Any, chars: int, items: int | None) -> Any:
    if isinstance(value, str) and len(value) > chars:
        return value[:chars] + TRUNCATED
    if isinstance(value, dict):
        return {k: _shorten(v, chars, items) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, chars, items) for v in value[:items]]
    return value


class Sync:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: Backend,
        outbound: Outbound,
        inbound: Inbound,
        state: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.outbound = outbound
        self.inbound = inbound
        # The relay's state for the backend: "active", "paused" (secret rejected) or
        # "degraded" (chat.db unreadable), asked at each sync.
        self._state = state
        # Changed at run time by the backend's config_updates (clamped in commands.intervals).
        self.intervals = {
            "heartbeat_interval": settings.heartbeat_interval,
            "sync_interval": settings.sync_interval,
        }
        self.started_at = time.time()
        saved = store.meta().get("last_sync_at")
        self.last_sync_at: float | None = float(saved) if saved else None

    def heartbeat_step(self) -> HttpOutcome:
        outcome = self.backend.heartbeat()
        level = log.info if outcome.ok else log.warning
        level(
            "heartbeat", status=outcome.status, error=outcome.error, ms=round(outcome.elapsed_ms, 1)
        )
        return outcome

    def status_payload(self, now: float) -> dict[str, Any]:
        stats = self.store.stats()
        meta = self.store.meta()
        last_delivery = meta.get("last_delivery_at")
        return {
            "state": self._state(),
            "rules": len(self.inbound.rules),
            "queue_depth": stats.depth,
            "oldest_undelivered_age_s": (
                round(now - stats.oldest_enqueued_at, 1) if stats.oldest_enqueued_at else None
            ),
            "dead_letters": stats.dead_letters,
            "last_delivery_at": utc_iso(float(last_delivery)) if last_delivery else None,
            "uptime_s": round(now - self.started_at, 1),
        }

    def _emits_refused(self, refused: tuple[commands.EmitEvent, ...], now: float) -> None:
        """emit_event beyond the per-answer cap are not carried out (nor marked seen: sent
        again, they run): 9,000 in one answer made 9,000 events to store and carry."""
        log.warning("emit_events_refused", count=len(refused), limit=commands.MAX_EMITS_PER_ANSWER)
        self.store.add_event(
            "commands_refused",
            {
                "details": {
                    "command_type": "emit_event",
                    "count": len(refused),
                    "limit": commands.MAX_EMITS_PER_ANSWER,
                    "command_ids": [a.command_id for a in refused[:REFUSED_IDS_LISTED]],
                    "reason": f"more than {commands.MAX_EMITS_PER_ANSWER} emit_event in one "
                    "sync answer: these were not carried out; send them again later",
                }
            },
            now,
        )

    def _answer_too_large(self, now: float) -> None:
        """An answer past the client's size cap was cut, so none of it can be read: its
        commands and acknowledgements are lost. Say so, here and to the backend, which can
        answer with fewer commands at a time (it brings the same ones again: none was run)."""
        log.warning(
            "sync_answer_too_large",
            limit_bytes=MAX_BODY_BYTES,
            hint="the backend's sync answer was cut at the size limit and ignored; "
            "it must send fewer commands per answer",
        )
        self.store.add_event(
            "sync_answer_too_large",
            {
                "details": {
                    "limit_bytes": MAX_BODY_BYTES,
                    "reason": "the last /edge/sync answer was larger than the relay reads; "
                    "none of its commands or ack_events was applied: send smaller pages",
                }
            },
            now,
        )

    def sync_step(self, now: float) -> HttpOutcome:
        """Report status and events; carry out the commands and settings that come back."""
        status = self.status_payload(now)
        events = self.store.next_event_page()
        # Never synced: the time the relay started (a backend model may require a time here).
        last_sync = self.last_sync_at or self.started_at
        payload = {
            "edge_agent_id": self.settings.agent_id,
            "version": __version__,
            "capabilities": list(CAPABILITIES),
            "events": fit_events(
                [
                    {
                        "event_id": e.event_id,
                        "event_type": e.event_type,
                        "timestamp": utc_iso(e.created_at),
                        **e.payload,
                    }
                    for e in events
                ]
            ),
            "status": status["state"],
            "last_sync": utc_iso(last_sync),
            "last_command_id": self.store.meta().get("last_command_id"),
            "stats": {k: v for k, v in status.items() if k != "state"},
        }
        outcome = self.backend.sync(payload)
        queue = {
            "queue_depth": status["queue_depth"],
            "oldest_undelivered_age_s": status["oldest_undelivered_age_s"],
            "dead_letters": status["dead_letters"],
        }
        if not outcome.ok:
            log.warning("sync_failed", status=outcome.status, error=outcome.error, **queue)
            return outcome
        self.last_sync_at = now
        self.store.set_meta("last_sync_at", repr(now))
        self.store.prune_delivered(now)
        self.store.prune_history(now)
        self.store.prune_rule_hits(now)
        if outcome.error == "too_large":
            self._answer_too_large(now)
        response = commands.parse_response(outcome.body)
        acked = self.store.ack_events(response.ack_events)
        for name, value in response.intervals.items():
            if self.intervals.get(name) != value:
                log.info("interval_updated", name=name, seconds=value)
                self.intervals[name] = value
        actions, refused = commands.cap_emits(response.actions)
        if refused:
            self._emits_refused(refused, now)
        try:
            for action in actions:
                self.outbound.execute(action, now)
        finally:
            if any(isinstance(a, SetRule) for a in actions):
                self.inbound.reload()
            self.store.cap_events(now)
        log.info(
            "sync",
            status=outcome.status,
            events_sent=len(events),
            events_acked=acked,
            commands=len(response.actions),
            command_types=sorted({type(a).__name__ for a in response.actions}),
            **queue,
        )
        return outcome
