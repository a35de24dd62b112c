"""Delivery: one attempt for one queued message, and which messages may start now.

`Relay` composes it; `daemon` runs it on lanes (see lanes for what an answer decides). Steps
take monotonic `now` (backoff and pause deadlines survive clock jumps).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ..backend.client import Backend
from ..config import Secret, Settings
from ..outbound.dispatch import Outbound
from ..pictures import rules as picture_rules
from ..pictures.upload import Photos
from ..policy import HttpOutcome, Verdict, backoff_seconds, verdict
from ..redact import scrub_body
from ..store import NewOutgoing, QueuedItem, Store
from .contents import Contents
from .lanes import Decision, Lanes

log = structlog.get_logger("archety_relay.relay")

# An outage's warning is repeated at most this often; each attempt still logs at info.
OUTAGE_LOG_INTERVAL = 60.0
IN_FLIGHT_PUBLISH_INTERVAL = 1.0
# A chat whose pictures are still downloading looks again this soon if photos named no time.
WAIT_FALLBACK_SECONDS = 1.0


@dataclass(frozen=True)
class Delivery:
    # "delivered" | "retry" | "auth_paused" | "dead_lettered" | "idle" | "waiting" |
    # "held" (this message's pictures are still downloading: its chat waits, others go on)
    kind: str
    wait: float | None = None  # seconds until the next step is worth running; None: until woken
    outcome: HttpOutcome | None = None


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: Backend,
        outbound: Outbound,
        photos: Photos,
        lanes: Lanes,
        *,
        secret: Callable[[], Secret],
        refresh_secret: Callable[[], None],
        contents: Contents | None = None,
    ) -> None:
        self.settings = settings
        self.contents = contents
        self.store = store
        self.backend = backend
        self.outbound = outbound
        self.photos = photos
        self.lanes = lanes
        self._secret = secret
        self._refresh_secret = refresh_secret
        # A Retry-After still running when the relay last stopped is honoured after a restart.
        wall, mono = time.time(), time.monotonic()
        for chat, until in store.asked_to_wait(wall).items():
            self.lanes.hold_chat(chat, mono, until - wall)
        # Messages the backend accepted whose delivery could not be written down yet (a full
        # disk, a locked file): by outbox id, with what is to be stored.
        self._unrecorded: dict[int, tuple[float, list[NewOutgoing]]] = {}
        self._scheduling = threading.Lock()
        self._publishing = threading.Lock()
        self._outage_logged_at: float | None = None
        # None: not written by this run yet. A run killed with requests in flight left them
        # in the state file; the first publish replaces them even when nothing is in flight.
        self._published: list[dict[str, Any]] | None = None
        self._published_at = 0.0

    def next_deliveries(
        self, now: float, limit: int | None = None
    ) -> tuple[list[QueuedItem], float | None]:
        """The messages to start now (at most `limit`), each marked in flight in its lane,
        and how long until it is worth asking again (None: until something changes). Every
        message returned must be handed to `deliver_item` and then to `lanes.finish`.
        Lanes and the sender thread both ask; one at a time, so no chat is handed out twice."""
        with self._scheduling:
            return self._next_deliveries(now, limit)

    def _next_deliveries(
        self, now: float, limit: int | None
    ) -> tuple[list[QueuedItem], float | None]:
        gate = self.lanes.gate(now)
        if gate is not None:
            return [], gate
        slots = self.lanes.free_slots(now)
        if limit is not None:
            slots = min(slots, limit)
        if slots <= 0:
            return [], None
        # More heads than slots, so a message that keeps failing can be passed over.
        wanted, blocked = max(slots, self.settings.max_in_flight), self.lanes.blocked_chats(now)
        heads = self.store.heads(wanted, blocked | self.lanes.suspect_chats())
        if not heads and self.lanes.suspect_chats():
            # Only messages refused in the storm are left: nobody waits behind one of them,
            # and without a probe they would wait for the next person to write.
            heads = self.store.heads(wanted, blocked)
        chosen = self.lanes.choose(heads, slots)
        wall = time.time()
        for item in chosen:
            self.lanes.start(item.chat_guid, item.message_guid, wall)
        return chosen, (None if chosen else self.lanes.next_wake(now))

    def deliver_step(self, now: float) -> Delivery:
        """Deliver one message: the oldest chat's head that may go now (one lane at a time;
        `daemon` runs several lanes side by side through `next_deliveries`)."""
        gate = self.lanes.gate(now)
        if gate is not None:
            return Delivery("waiting", gate)
        chosen, wait = self.next_deliveries(now, limit=1)
        if not chosen:
            if self.store.stats().depth:
                return Delivery("waiting", wait)
            return Delivery("idle")
        item = chosen[0]
        try:
            return self.deliver_item(item, now)
        finally:
            self.lanes.finish(item.chat_guid)

    def deliver_item(self, item: QueuedItem, now: float) -> Delivery:
        """One attempt for one queued message, and everything its answer decides."""
        if self.lanes.pause_reason is not None:
            self._refresh_secret()
        unrecorded = self._unrecorded.get(item.id)
        if unrecorded is not None:
            # Delivered already; only our bookkeeping failed. Posting again would make the
            # persona answer twice, so retry just the write.
            self._record_delivery(item, *unrecorded)
            return Delivery("delivered", 0.0)
        # A voice note's transcript, a card's contents, then pictures: the message goes once
        # they are read, uploaded or given up on (contents, photos). Either failing is
        # contained like a picture step (`_picture_step_failed`).
        body = item.body
        try:
            if self.contents is not None:
                opened = self.contents.settle(
                    item.message_guid, body, item.enqueued_at, time.time()
                )
                if opened.wait is not None:  # only this chat waits, the other lanes go on
                    self.lanes.hold_chat(item.chat_guid, now, opened.wait)
                    return Delivery("held", opened.wait)
                body = opened.body
            settled = self.photos.settle(item.message_guid, body, item.enqueued_at, time.time())
        except Exception as exc:
            return self._picture_step_failed(item, exc, now)
        if settled.kind == "waiting":
            # Still downloading from iCloud: only this chat waits, the other lanes go on.
            wait = settled.wait or WAIT_FALLBACK_SECONDS
            self.lanes.hold_chat(item.chat_guid, now, wait)
            return Delivery("held", wait)
        if settled.outcome is not None:  # an upload failed the way a message can: wait it out
            outcome = settled.outcome
        else:
            outcome = self.backend.post_message(settled.body or body, item.message_guid)
        decided = verdict(outcome)
        replies: list[NewOutgoing] = []
        reply = None
        wall = time.time()
        if decided is Verdict.DELIVERED:
            replies, reply = self._replies(item, outcome, wall)
        paused_for = self.lanes.pause_reason
        # Waits count from the answer, not from the request: a Retry-After of 2 s after a
        # reply that took 1 s means 3 s after sending.
        answered = now + outcome.elapsed_ms / 1000
        decision = self.lanes.decide(
            item.chat_guid,
            item.message_guid,
            item.attempts + 1,
            outcome,
            decided,
            answered,
            sender=item.sender,
        )
        log.info(
            "message_delivery_attempt",
            message_guid=item.message_guid,
            chat_guid=item.chat_guid,
            status=outcome.status,
            error=outcome.error,
            attempt=item.attempts + 1,
            ms=round(outcome.elapsed_ms, 1),
            verdict=decision.action,
            reply=reply,  # the reply shape read, or why nothing is sent back
        )
        if decision.action == "delivered":
            self._unrecorded[item.id] = (wall, replies)
            self._record_delivery(item, wall, replies)
            self._recovered(item.message_guid, paused_for)
            return Delivery("delivered", 0.0, outcome)
        if decision.action == "dead_letter":
            if settled.attachment_guid is not None:
                # It is one picture the backend keeps failing, not the message: give up on the
                # picture and let the message (its text) go at the next attempt.
                self.photos.give_up(settled.attachment_guid, outcome, time.time())
                self.store.record_attempt(item.id, outcome.status, outcome.error)
                return Delivery("retry", 0.0, outcome)
            return self._dead_letter(item, outcome, decision.reason)
        asked = time.time() + outcome.retry_after if outcome.retry_after else None
        self.store.record_attempt(item.id, outcome.status, outcome.error, asked)
        self.store.set_meta("last_error", outcome.summary())
        if decision.action in ("auth_paused", "paused"):
            return self._paused(item, outcome, decision)
        self._log_outage(outcome, answered, decision.wait)
        return Delivery("retry", decision.wait, outcome)

    def _picture_step_failed(self, item: QueuedItem, exc: Exception, now: float) -> Delivery:
        """The picture step raised before anything was posted (chat.db's attachment table
        unreadable, the state file, a bug). That is this message's trouble, not the backend's:
        it counts as the message's attempt (`status` and `skip-head` see it), only its chat
        waits, the lanes' outage counters are untouched, and after ARCHETY_POISON_ATTEMPTS its
        pictures are given up (`photo_step_failed`) so that its text still goes."""
        attempts = item.attempts + 1
        error = f"picture step: {type(exc).__name__}"
        self.store.record_attempt(item.id, None, error)
        given_up = 0
        if attempts >= self.settings.poison_attempts:
            given_up = self.photos.give_up_all(
                item.message_guid, item.body, picture_rules.PHOTO_STEP_FAILED, time.time()
            )
        wait = 0.0 if given_up else backoff_seconds(attempts, None, self.settings.max_backoff)
        self.lanes.hold_chat(item.chat_guid, now, wait)
        log.warning(
            "photo_step_failed",
            message_guid=item.message_guid,
            chat_guid=item.chat_guid,
            attempt=attempts,
            error=error,
            pictures_given_up=given_up,
            retry_in_s=round(wait, 2),
            exc_info=exc,
            hint="preparing this message's pictures failed before it was posted; only its chat "
            "waits. After ARCHETY_POISON_ATTEMPTS tries its pictures are skipped and its text "
            "goes; `archety-relay skip-head` moves it aside now",
        )
        return Delivery("retry", wait)

    def publish_in_flight(self, wall: float) -> bool:
        """Write what is at the backend now into the state file for `status` (another
        process), at most once a second. True while a change is still to be written.
        The sender and the lanes both call it; one writes at a time, the others skip."""
        if not self._publishing.acquire(blocking=False):
            return True
        try:
            return self._publish(wall)
        finally:
            self._publishing.release()

    def _publish(self, wall: float) -> bool:
        current = [
            {"chat_guid": f.chat_guid, "message_guid": f.message_guid, "since": f.started_wall}
            for f in self.lanes.in_flight()
        ]
        if current == self._published:
            return False
        if wall - self._published_at < IN_FLIGHT_PUBLISH_INTERVAL:
            return True
        self.store.set_meta("in_flight", json.dumps(current) if current else None)
        self._published, self._published_at = current, wall
        return False

    def _replies(
        self, item: QueuedItem, outcome: HttpOutcome, wall: float
    ) -> tuple[list[NewOutgoing], str | None]:
        """The replies a 2xx carried. Whatever the body holds, the delivery stands: an answer
        we cannot read is logged and sends nothing, it never makes us post the message again."""
        try:
            return self.outbound.replies_for(item, outcome.body, wall)
        except Exception as exc:
            log.warning(
                "reply_unreadable",
                message_guid=item.message_guid,
                error=type(exc).__name__,
                hint="the backend's answer could not be read as a reply; nothing is sent back",
            )
            return [], "unreadable"

    def _record_delivery(self, item: QueuedItem, wall: float, replies: list[NewOutgoing]) -> None:
        self.store.mark_delivered(item, wall, replies)
        self._unrecorded.pop(item.id, None)
        if replies:
            self.outbound.notify()

    def _dead_letter(self, item: QueuedItem, outcome: HttpOutcome, reason: str | None) -> Delivery:
        # Error bodies echo what we sent (a 422's `input`): keep and log only the scrubbed.
        response = scrub_body(outcome.excerpt, (self._secret().reveal(),))
        if reason:
            response = f"{reason}; last answer: {outcome.summary()} {response}".strip()
        self.store.dead_letter(item, outcome.status, response, time.time())
        self.lanes.forget_chat(item.chat_guid)
        log.error(
            "message_dead_lettered",
            message_guid=item.message_guid,
            status=outcome.status,
            reason=reason,
            response=response[:300],
            hint="the backend refused this message; `archety-relay status` lists it and "
            "`archety-relay retry-dead` queues it again",
        )
        return Delivery("dead_lettered", 0.0, outcome)

    def _paused(self, item: QueuedItem, outcome: HttpOutcome, decision: Decision) -> Delivery:
        if decision.restore:
            restored = self.store.retry_dead(time.time(), decision.restore)
            log.info("dead_letters_restored", count=restored, reason=decision.reason)
        queued = self.store.stats().depth
        if decision.action == "auth_paused":
            self.store.set_meta("auth_state", f"rejected_{outcome.status}")
            log.error(
                "auth_rejected",
                status=outcome.status,
                queued=queued,
                next_probe_s=decision.wait,
                hint=f"the backend rejected RELAY_WEBHOOK_SECRET ({outcome.status}). Sending is "
                "paused and nothing is dropped. Fix the secret in the Keychain "
                "(`archety-relay set-secret`) or .env; the relay re-reads it before each probe.",
            )
            return Delivery("auth_paused", decision.wait, outcome)
        self.store.set_meta("auth_state", None)
        log.error(
            "backend_rejecting_everything",
            status=outcome.status,
            queued=queued,
            next_probe_s=decision.wait,
            response=scrub_body(outcome.excerpt, (self._secret().reveal(),))[:300],
            hint=f"messages of several different chats and senders were refused alike (HTTP "
            f"{outcome.status}) with no success between: the backend "
            "or its URL is wrong, not the messages. Sending is paused and nothing is dropped; "
            "one message is tried again each probe interval.",
        )
        return Delivery("auth_paused", decision.wait, outcome)

    def _log_outage(self, outcome: HttpOutcome, now: float, wait: float | None) -> None:
        if (
            self._outage_logged_at is not None
            and now - self._outage_logged_at < OUTAGE_LOG_INTERVAL
        ):
            return
        self._outage_logged_at = now
        log.warning(
            "backend_unavailable",
            status=outcome.status,
            error=outcome.error,
            failures=self.lanes.failures,
            retry_in_s=round(wait or 0.0, 2),
            queued=self.store.stats().depth,
        )

    def _recovered(self, message_guid: str, paused_for: str | None) -> None:
        if paused_for is not None and paused_for.startswith("auth"):
            log.info("auth_recovered", message_guid=message_guid)
            self.store.set_meta("auth_state", "ok")
        elif paused_for is not None or self._outage_logged_at is not None:
            log.info("backend_recovered", message_guid=message_guid)
        if paused_for is not None or self._outage_logged_at is not None:
            self.store.set_meta("last_error", None)
        self._outage_logged_at = None
