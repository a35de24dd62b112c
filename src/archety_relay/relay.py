"""The relay's steps. Each does one unit of work for a given `now` and returns what it did.

`daemon` repeats them on threads; `--once` and the tests call them directly. Steps take time as an
argument instead of reading the clock, so a test can put any moment in:
- `capture_step(now)`: wall-clock `now` (message age, how long a row has waited for its chat);
- `deliver_step(now)`: monotonic `now` (backoff and auth-pause deadlines survive clock jumps).

Relay composes the parts; what each step does lives beside it: capture, delivery (with lanes),
changes, sync, photos, outbound.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable
from typing import Any

import structlog

from . import __version__, phones
from .backend.client import Backend
from .capture.changes import Changes, ChangesResult
from .capture.inbound import Inbound
from .capture.new_rows import Capture, CaptureResult
from .capture.outcomes import Outcomes
from .chatdb.guids import Target
from .chatdb.reader import ChatDb
from .config import Secret, Settings
from .contacts.names import names_for
from .contacts.reader import AddressBook
from .delivery.attempt import Deliverer, Delivery
from .delivery.contents import Contents
from .delivery.lanes import Lanes
from .errors import ChatDbUnavailable
from .health.checks import Snapshot
from .health.keepalive import TIMED_OUT, MessagesKeeper
from .health.silence import Silence
from .health.tally import Tally
from .macos import automation, messages_app
from .macos.messages_app import SendResult
from .outbound.dispatch import Outbound, Sender
from .outbound.retention import StagedFiles
from .outbound.sync import Sync
from .pictures.upload import Photos
from .policy import HttpOutcome
from .store import QueuedItem, Store

log = structlog.get_logger("archety_relay.relay")


class Relay:
    def __init__(
        self,
        settings: Settings,
        chatdb: ChatDb,
        store: Store,
        *,
        backend: Backend | None = None,
        reload_secret: Callable[[], Secret] | None = None,
        rng: random.Random | None = None,
        send: Sender | None = None,
    ) -> None:
        self.settings = settings
        self.chatdb = chatdb
        self.store = store
        self.secret = settings.secret
        self.backend = backend or Backend.from_settings(settings, lambda: self.secret)
        # What /metrics counts: the steps below add to it, the metrics server only reads it.
        self.tally = Tally()
        self.last_inbound_at: float | None = None
        self.outbound = Outbound(
            settings, store, chatdb, send or messages_app.send, self.backend.fetch_file
        )
        self.outbound.send = self._counted(self.outbound.send)
        self.staged = StagedFiles(self.outbound.staging_root, store, chatdb)
        self.photos = Photos(settings, chatdb, store, self.backend)
        self.contents = Contents(settings, chatdb, store)
        self._reload_secret = reload_secret
        self._rng = rng or random.Random()
        self.inbound = Inbound(settings, store)
        self.inbound.notify = lambda: self.outbound.notify()
        self.capture = Capture(settings, chatdb, store, self.inbound.admit)
        self.contacts: AddressBook | None = None
        if settings.contact_names:
            region = phones.region_of(settings.persona_phone, settings.default_region)
            self.contacts = AddressBook(settings.address_book_dir, region)
            self.capture.names = functools.partial(names_for, self.contacts)
        self.chatdb_ok = True
        self.changes = Changes(chatdb, store, lambda: self.capture.captured_to)
        self.outcomes = Outcomes(chatdb, store)
        self.silence = Silence(chatdb, store, settings.silence_alert, time.time())
        # Only on macOS (or with `platform="darwin"` and fake tools, in tests).
        self.keeper = MessagesKeeper(store)
        self.lanes = Lanes(
            max_in_flight=settings.max_in_flight,
            max_backoff=settings.max_backoff,
            probe_interval=settings.auth_probe_interval,
            poison_attempts=settings.poison_attempts,
            rng=self._rng,
        )
        self.delivery = Deliverer(
            settings,
            store,
            self.backend,
            self.outbound,
            self.photos,
            self.lanes,
            secret=lambda: self.secret,
            refresh_secret=self._refresh_secret,
            contents=self.contents,
        )
        self.delivery.deliver_item = self._counted_delivery(  # type: ignore[method-assign,assignment]
            self.delivery.deliver_item
        )
        self.sync = Sync(
            settings,
            store,
            self.backend,
            self.outbound,
            self.inbound,
            self._state,
        )
        # Changed at run time by the backend's config_updates; the daemon's timer reads it.
        self.intervals = self.sync.intervals

    # -- capture: chat.db -> outbox ---------------------------------------------------------
    def capture_step(self, now: float) -> CaptureResult:
        """Move every new chat.db row into the outbox (or past it, with a reason)."""
        try:
            result = self.capture.step(now)
        except ChatDbUnavailable:
            self.chatdb_ok = False
            raise
        self.chatdb_ok = True
        self.tally.captured_messages([now - date for date in result.dates])
        return result

    def _state(self) -> str:
        """What the sync reports: paused while the secret is rejected, degraded while chat.db
        cannot be read, else active."""
        if self.lanes.pause_reason is not None:
            return "paused"
        return "active" if self.chatdb_ok else "degraded"

    def changes_step(self, now: float) -> ChangesResult:
        """Find edits, unsends and read receipts in the recent window, and what became of the
        persona's sends of the last day; store them as events."""
        result = self.changes.step(now)
        found = self.outcomes.step(now)
        if found:
            result.emitted += sum(found.values())
            self.tally.outcome("delivered", found["message_delivered"])
            self.tally.outcome("not_delivered", found["message_not_delivered"])
        return result

    def health_step(self, now: float) -> int:
        """Messages.app running and signed in, and incoming messages still arriving (wall-clock
        `now`); returns how many alert events were stored."""
        allowed = self.outbound.permission.state == automation.ALLOWED
        events = self.keeper.check(now, may_script=allowed)
        events += self.silence.step(now)
        self.last_inbound_at = self.silence.last_inbound_at
        return events

    # -- delivery: outbox -> backend (delivery.py) -----------------------------------------
    def next_deliveries(
        self, now: float, limit: int | None = None
    ) -> tuple[list[QueuedItem], float | None]:
        return self.delivery.next_deliveries(now, limit)

    def deliver_step(self, now: float) -> Delivery:
        """Deliver one message: the oldest chat's head that may go now."""
        return self.delivery.deliver_step(now)

    def deliver_item(self, item: QueuedItem, now: float) -> Delivery:
        """One attempt for one queued message, and everything its answer decides."""
        return self.delivery.deliver_item(item, now)

    def _counted_delivery(
        self, deliver: Callable[[QueuedItem, float], Delivery]
    ) -> Callable[[QueuedItem, float], Delivery]:
        """The deliverer's one attempt, with each answer from the backend added to the tally
        (not a wait, a hold or an idle look): both `deliver_step` and the lanes go through it."""

        def counted(item: QueuedItem, now: float) -> Delivery:
            delivery = deliver(item, now)
            self._count_delivery(item.body, delivery)
            return delivery

        return counted

    def _count_delivery(self, body: bytes, delivery: Delivery) -> None:
        outcome = delivery.outcome
        if outcome is None:
            return
        wall = time.time()
        self.tally.backend(outcome.status is not None and outcome.status < 500, wall)
        latency = None
        if delivery.kind == "delivered":
            sent_at = message_timestamp(body)
            latency = wall - sent_at if sent_at else None
        self.tally.attempt(delivery.kind, latency)

    def _counted(self, send: Sender) -> Sender:
        """The sender, with each result added to the tally (`sends_total{outcome}`)."""

        def counted(target: Target, text: str, *file: str) -> SendResult:
            result = send(target, text, *file)
            self.tally.sent(send_outcome(result))
            self.keeper.observe_send(result, time.time())
            return result

        return counted

    def health_snapshot(self, now: float) -> Snapshot:
        """The relay's state at wall-clock `now` as values, for /metrics and /healthz: read
        only, never changed."""
        stats = self.store.stats()
        return Snapshot(
            now=now,
            version=__version__,
            agent_id=self.settings.agent_id,
            queue_depth=stats.depth,
            oldest_enqueued_at=stats.oldest_enqueued_at,
            dead_letters=stats.dead_letters,
            events_pending=self.store.events_pending(),
            pause_reason=self.lanes.pause_reason,
            chatdb_ok=self.chatdb_ok,
            last_inbound_at=self.last_inbound_at,
            alerts=self.store.active_alerts(),
            tally=self.tally.view(),
        )

    def publish_in_flight(self, wall: float) -> bool:
        return self.delivery.publish_in_flight(wall)

    def _refresh_secret(self) -> None:
        """While rejected, pick up a secret fixed in .env or the Keychain, without a restart."""
        if self._reload_secret is None:
            return
        try:
            fresh = self._reload_secret()
        except Exception as exc:  # a broken .env mid-edit must not stop the probe
            log.warning("secret_reload_failed", error=str(exc))
            return
        if fresh != self.secret:
            log.info("secret_reloaded", source="configuration")
            self.secret = fresh

    def reload_secret_now(self) -> None:
        """SIGHUP: re-read the secret and probe at once if sending was paused."""
        self._refresh_secret()
        self.lanes.probe_now()

    # -- heartbeat and sync (sync.py) ------------------------------------------------------
    def prune_staged(self, now: float) -> int:
        """Remove the staged files Messages no longer needs (see outbound.retention)."""
        return self.staged.prune(now, self.outbound.busy_ids())

    def heartbeat_step(self) -> HttpOutcome:
        outcome = self.sync.heartbeat_step()
        self.tally.backend(outcome.status is not None and outcome.status < 500, time.time())
        return outcome

    def status_payload(self, now: float) -> dict[str, Any]:
        return self.sync.status_payload(now)

    def photos_step(self, now: float) -> tuple[int, float | None]:
        """Pictures posted as pending: upload those that landed; voice notes posted without a
        transcript: report one that came (wall-clock `now`). Returns
        (events added, seconds until the next look or None)."""
        events, wait = self.photos.follow_up_step(now)
        heard, heard_wait = self.contents.follow_up_step(now)  # voice notes' late transcripts
        waits = [w for w in (wait, heard_wait) if w is not None]
        return events + heard, (min(waits) if waits else None)

    def sync_step(self, now: float) -> HttpOutcome:
        """Report status and events; carry out the commands and settings that come back."""
        outcome = self.sync.sync_step(now)
        self.tally.backend(outcome.status is not None and outcome.status < 500, time.time())
        return outcome


def message_timestamp(body: bytes) -> float | None:
    """The `timestamp` (Unix seconds) of a queued message body, or None."""
    try:
        value = json.loads(body).get("timestamp")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def send_outcome(result: SendResult) -> str:
    """A send's result as one fixed word for a metric label (never the error's text)."""
    if result.ok:
        return "ok"
    error = result.error or ""
    if TIMED_OUT in error:
        return "timeout"
    return "error" if result.retryable else "refused"
