"""The relay's steps. Each does one unit of work for a given `now` and returns what it did.

`daemon` repeats them on threads; `--once` and the tests call them directly. Steps take time as an
argument instead of reading the clock, so a test can put any moment in:
- `capture_step(now)`: wall-clock `now` (message age, how long a row has waited for its chat);
- `deliver_step(now)`: monotonic `now` (backoff and auth-pause deadlines survive clock jumps).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from .backend import Backend
from .capture import Capture, CaptureResult
from .changes import Changes, ChangesResult
from .chatdb import ChatDb
from .config import Secret, Settings
from .errors import ChatDbUnavailable
from .inbound import Inbound
from .outbound import Outbound, Sender
from .photos import Photos
from .policy import HttpOutcome, Verdict, backoff_seconds, verdict
from .redact import scrub_body
from .store import NewOutgoing, Store
from .sync import Sync

log = structlog.get_logger("archety_relay.relay")

# An outage's warning is repeated at most this often; each attempt still logs at info.
OUTAGE_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class Delivery:
    kind: str  # "delivered" | "retry" | "auth_paused" | "dead_lettered" | "idle" | "waiting"
    wait: float | None = None  # seconds until the next step is worth running; None: until woken
    outcome: HttpOutcome | None = None


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
        self.outbound = Outbound(settings, store, chatdb, **({"send": send} if send else {}))
        self.photos = Photos(settings, chatdb, store, self.backend)
        self._reload_secret = reload_secret
        self._rng = rng or random.Random()
        self.inbound = Inbound(settings, store)
        self.inbound.notify = lambda: self.outbound.notify()
        self.capture = Capture(settings, chatdb, store, self.inbound.admit)
        self.chatdb_ok = True
        self.changes = Changes(chatdb, store)
        self.failures = 0
        self.retry_at = 0.0
        self.auth_paused_until: float | None = None
        self._outage_logged_at: float | None = None
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
        return result

    def _state(self) -> str:
        """What the sync reports: paused while the secret is rejected, degraded while chat.db
        cannot be read, else active."""
        if self.auth_paused_until is not None:
            return "paused"
        return "active" if self.chatdb_ok else "degraded"

    def changes_step(self, now: float) -> ChangesResult:
        """Find edits, unsends and read receipts in the recent window; store them as events."""
        return self.changes.step(now)

    # -- delivery: outbox -> backend --------------------------------------------------------
    def deliver_step(self, now: float) -> Delivery:
        """Try to deliver the oldest queued message once."""
        if self.auth_paused_until is not None and now < self.auth_paused_until:
            return Delivery("waiting", self.auth_paused_until - now)
        if now < self.retry_at:
            return Delivery("waiting", self.retry_at - now)
        item = self.store.head()
        if item is None:
            return Delivery("idle")
        if self.auth_paused_until is not None:
            self._refresh_secret()
        outcome = self.backend.post_message(item.body, item.message_guid)
        decided = verdict(outcome)
        replies: list[NewOutgoing] = []
        reply = None
        if decided is Verdict.DELIVERED:
            wall = time.time()
            replies, reply = self.outbound.replies_for(item, outcome.body, wall)
        log.info(
            "message_delivery_attempt",
            message_guid=item.message_guid,
            status=outcome.status,
            error=outcome.error,
            attempt=item.attempts + 1,
            ms=round(outcome.elapsed_ms, 1),
            verdict=decided.value,
            reply=reply,  # the reply shape read, or why nothing is sent back
        )
        if decided is Verdict.DELIVERED:
            self.store.mark_delivered(item, wall, replies)
            if replies:
                self.outbound.notify()
            self._recovered(item.message_guid, now)
            return Delivery("delivered", 0.0, outcome)
        if decided is Verdict.DEAD_LETTER:
            # Error bodies echo what we sent (a 422's `input`): keep and log only the scrubbed.
            response = scrub_body(outcome.body, (self.secret.reveal(),))
            self.store.dead_letter(item, outcome.status, response, time.time())
            log.error(
                "message_dead_lettered",
                message_guid=item.message_guid,
                status=outcome.status,
                response=response[:300],
                hint="the backend refused this message; `archety-relay status` lists it and "
                "`archety-relay retry-dead` queues it again",
            )
            return Delivery("dead_lettered", 0.0, outcome)
        self.store.record_attempt(item.id, outcome.status, outcome.error)
        self.store.set_meta("last_error", outcome.summary())
        if decided is Verdict.AUTH_PAUSED:
            interval = self.settings.auth_probe_interval
            self.auth_paused_until = now + interval
            self.store.set_meta("auth_state", f"rejected_{outcome.status}")
            log.error(
                "auth_rejected",
                status=outcome.status,
                queued=self.store.stats().depth,
                next_probe_s=interval,
                hint=f"the backend rejected RELAY_WEBHOOK_SECRET ({outcome.status}). Sending is "
                "paused and nothing is dropped. Fix the secret in the Keychain "
                "(`archety-relay set-secret`) or .env; the relay re-reads it before each probe.",
            )
            return Delivery("auth_paused", interval, outcome)
        self.failures += 1
        delay = backoff_seconds(
            self.failures, outcome.retry_after, self.settings.max_backoff, self._rng
        )
        self.retry_at = now + delay
        if self._outage_logged_at is None or now - self._outage_logged_at >= OUTAGE_LOG_INTERVAL:
            self._outage_logged_at = now
            log.warning(
                "backend_unavailable",
                status=outcome.status,
                error=outcome.error,
                failures=self.failures,
                retry_in_s=round(delay, 2),
                queued=self.store.stats().depth,
            )
        return Delivery("retry", delay, outcome)

    def _recovered(self, message_guid: str, now: float) -> None:
        if self.auth_paused_until is not None:
            log.info("auth_recovered", message_guid=message_guid)
            self.store.set_meta("auth_state", "ok")
        if self.failures:
            log.info("backend_recovered", after_failures=self.failures)
        if self.auth_paused_until is not None or self.failures:
            self.store.set_meta("last_error", None)
        self.auth_paused_until = None
        self.failures = 0
        self.retry_at = 0.0
        self._outage_logged_at = None

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
        if self.auth_paused_until is not None:
            self.auth_paused_until = 0.0

    # -- heartbeat and sync (sync.py) ------------------------------------------------------
    def heartbeat_step(self) -> HttpOutcome:
        return self.sync.heartbeat_step()

    def status_payload(self, now: float) -> dict[str, Any]:
        return self.sync.status_payload(now)

    def photos_step(self, now: float) -> tuple[int, float | None]:
        """Pictures posted as pending: upload those that landed (wall-clock `now`). Returns
        (events added, seconds until the next look or None)."""
        return self.photos.follow_up_step(now)

    def sync_step(self, now: float) -> HttpOutcome:
        """Report status and events; carry out the commands and settings that come back."""
        return self.sync.sync_step(now)
