"""`archety-relay --once`: one pass of every step, for a manual test. Returns a report value."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..backend.files import FETCH_DEADLINE_SECONDS
from ..errors import EXIT_AUTH, EXIT_BACKEND, EXIT_OK
from ..policy import HttpOutcome
from ..relay import Relay

# How long `--once` waits for rows capture holds back (chat join, bunch detection), at most.
MAX_HOLD_WAIT_SECONDS = 15.0
HOLD_RECHECK_SECONDS = 0.1
# Enough to drain any realistic queue in one manual run, but never an endless loop.
MAX_DELIVERIES = 100_000


@dataclass
class OnceReport:
    health: HttpOutcome | None = None
    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    enqueued: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    failed: HttpOutcome | None = None  # the delivery that stopped the run, if one did
    still_queued: int = 0
    sync: HttpOutcome | None = None
    outgoing: dict[str, int] = field(default_factory=dict)  # replies/sends by status, after

    @property
    def exit_code(self) -> int:
        for outcome in (self.health, self.failed):
            if outcome is not None and outcome.status in (401, 403):
                return EXIT_AUTH
        if self.health is not None and not self.health.ok:
            return EXIT_BACKEND
        if self.failed is not None:
            return EXIT_BACKEND
        return EXIT_OK


@dataclass
class Drained:
    delivered: int = 0
    dead_lettered: int = 0
    failed: HttpOutcome | None = None  # the last failure, if any message could not go
    stopped_by: str = "idle"  # "idle" | "waiting" (what is left must wait) | "auth_paused"


def drain(relay: Relay, progress: Callable[[int], None] | None = None) -> Drained:
    """Deliver what can go now, one message at a time, in a foreground command.

    A chat whose message fails waits out its backoff while the other chats go on; the run
    ends when nothing is queued, when everything left must wait, or on a rejected secret.
    """
    drained = Drained()
    for _ in range(MAX_DELIVERIES):
        delivery = relay.deliver_step(time.monotonic())
        if delivery.kind in ("delivered", "dead_lettered"):
            if delivery.kind == "delivered":
                drained.delivered += 1
            else:
                drained.dead_lettered += 1
            if progress:
                progress(drained.delivered + drained.dead_lettered)
            continue
        if delivery.outcome is not None:
            drained.failed = delivery.outcome
        if delivery.kind in ("idle", "waiting", "auth_paused"):
            drained.stopped_by = delivery.kind
            break
    return drained


def run_once(relay: Relay) -> OnceReport:
    """Health check, capture, in-place changes, deliver everything queued, one sync, send what
    is due.

    Capture runs even when the backend is down: storing rows in the outbox is always safe.
    ChatDbUnavailable propagates (exit 5).
    """
    report = OnceReport()
    report.health = relay.heartbeat_step()
    captured = relay.capture_step(time.time())
    # A row may be held for a moment (its chat join or text still to come, an old row waiting
    # to see whether it is part of an iCloud bunch). A foreground run waits it out, within a
    # bound, instead of leaving it - and everything behind it - for a run that would hold it
    # again from the start.
    deadline = time.monotonic() + MAX_HOLD_WAIT_SECONDS
    while captured.holding and time.monotonic() < deadline:
        time.sleep(HOLD_RECHECK_SECONDS)
        more = relay.capture_step(time.time())
        more.read += captured.read
        more.enqueued += captured.enqueued
        more.skipped.update(captured.skipped)
        captured = more
    # Edits, unsends and reads of the last 20 minutes go out in this run's sync.
    relay.changes_step(time.time())
    report.read, report.enqueued, report.skipped = (
        captured.read,
        captured.enqueued,
        captured.skipped,
    )
    if report.health.ok:
        drained = drain(relay)
        report.delivered, report.dead_lettered = drained.delivered, drained.dead_lettered
        report.failed = drained.failed
        relay.photos_step(time.time())  # pictures that landed after their message went
        report.sync = relay.sync_step(time.time())
        # Replies and commanded sends that are due go out now; later bubbles wait for the daemon.
        # There is no later step to record a fetch that is back: this one waits for its files.
        relay.outbound.fetch_wait = FETCH_DEADLINE_SECONDS
        relay.outbound.dispatch_step(time.time())
    report.still_queued = relay.store.stats().depth
    report.outgoing = relay.store.outgoing_counts()
    return report
