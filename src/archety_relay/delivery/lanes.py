"""Which chats may have a message at the backend now, and what one answer means for the others.

The orchestrator answers a message with the persona's reply, so one request can last as long as
a model takes to think. Each chat is a lane: its messages go one at a time, the next only after
the backend answered the one before (and its reply was stored); different chats are in flight
side by side, up to `max_in_flight`. This module only decides; `relay` makes the attempts and
`daemon` runs the lanes on threads.

What an outcome does:

  2xx                      the chat goes on; every shared backoff and pause ends
  429                      only that chat waits (the backend limits per sender), at least as
                           long as Retry-After asked
  5xx, timeout, reset      that chat waits (its message's own backoff). Several failures in a
                           row with no success anywhere mean the backend is down: all lanes
                           back off together and probe one at a time
  connection refused, TLS  the backend is down, at once
  the same message keeps   after `poison_attempts` failures while other messages went through,
  failing alone            it is the message, not the backend: it becomes a dead letter
  401, 403                 everything pauses; one probe per `auth_probe_interval`
  other 4xx                that message becomes a dead letter, and nobody else waits: a backend
                           refuses a message for who sent it (a stranger it does not know, an
                           e-mail handle) or for what it holds. Only when several DISTINCT chats
                           and senders are refused alike with no success between (a 404 storm
                           while the backend redeploys) is it the backend's problem: everything
                           pauses and probes like 401, and the messages already moved aside are
                           put back. Those messages took part in the storm: none of them is
                           ever the probe while another message waits, and once the backend has
                           answered 2xx again, one of them refused again is a dead letter at
                           once and starts no new storm
Every time here is monotonic, passed in as `now`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ..policy import HttpOutcome, Verdict, backoff_seconds, is_backend_down

# Consecutive failures (of any chats, with no success between) that mean the backend is down.
DOWN_AFTER_FAILURES = 3
# Refusals with the same status in a row, from this many distinct chats AND as many distinct
# senders, before it is the backend's fault. Counting messages was not enough: two messages of
# one stranger the backend does not know paused every chat (review 2026-12-04, #1). A 404/405/
# 410 is what a platform edge says while the app redeploys, and it reaches every chat that
# writes; a 400 or 422 is usually about the message or its sender, so it takes more of them.
STORM_SPREAD = {404: 3, 405: 3, 410: 3}
DEFAULT_STORM_SPREAD = 5


class _Queued(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def attempts(self) -> int: ...


Q = TypeVar("Q", bound=_Queued)


@dataclass(frozen=True)
class InFlight:
    chat_guid: str
    message_guid: str
    started_wall: float


@dataclass(frozen=True)
class Refusal:
    """One message refused with a 4xx since the last 2xx: what a storm is made of."""

    message_guid: str
    chat_guid: str
    sender: str
    status: int
    at: float = 0.0  # when the refusal was answered


def is_storm(refusals: Sequence[Refusal], accepted: Set[str] = frozenset()) -> bool:
    """Refusals alike from enough distinct chats and senders to blame the backend, not them.
    Once the backend has accepted anything (`accepted`: chats it answered 2xx), one of the
    refused chats must be among those: a redeploy refuses chats that worked a moment ago, a
    wave of strangers the backend never knew is about them (attack on issue #21: six new
    numbers held every chat for four probe intervals)."""
    if not refusals:
        return False
    if accepted and not any(r.chat_guid in accepted for r in refusals):
        return False
    spread = STORM_SPREAD.get(refusals[-1].status, DEFAULT_STORM_SPREAD)
    chats = {r.chat_guid for r in refusals}
    senders = {r.sender for r in refusals}
    return len(chats) >= spread and len(senders) >= spread


@dataclass(frozen=True)
class Decision:
    """What the relay should do with the message after this outcome."""

    action: str  # "delivered" | "retry" | "auth_paused" | "paused" | "dead_letter"
    wait: float | None = None  # until this chat (or everything, when paused) may go again
    restore: tuple[str, ...] = ()  # dead letters to put back: the storm was not their fault
    reason: str | None = None


@dataclass
class Lanes:
    max_in_flight: int
    max_backoff: float
    probe_interval: float
    poison_attempts: int
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.busy: dict[str, InFlight] = {}
        self.chat_retry_at: dict[str, float] = {}
        self.failures = 0  # consecutive, across lanes, with no success between
        # The shared backoff grows per round, not per failure: sixteen lanes failing at once
        # are one failed try of the backend, not sixteen (a blip must not mean the cap).
        # A failure starts a new round only if its request went after the last round's answer.
        self._rounds = 0
        self._round_at = float("-inf")
        self._down_round = 0  # the round in which the backend was judged down
        self.down = False  # the backend is out: one probe at a time, everyone backs off
        self.retry_at = 0.0  # shared backoff while the backend is down
        self.paused_until: float | None = None
        self.pause_reason: str | None = None  # "auth_401" | "rejected_404" ...
        self._paused_at = float("-inf")  # when the current pause began
        self._delivered = 0
        self._failing_since: dict[str, int] = {}  # message guid -> deliveries at 1st failure
        self._storm: list[Refusal] = []  # refused alike since the last 2xx
        self._accepted: set[str] = set()  # chats the backend has answered 2xx (this run)
        # Messages that took part in a storm (message guid -> chat guid): never the probe while
        # another message waits; refused again after a 2xx, a dead letter with no new storm.
        self._suspects: dict[str, str] = {}

    # -- choosing ---------------------------------------------------------------------------
    def gate(self, now: float) -> float | None:
        """Seconds until anything may be sent (a pause or the shared backoff), or None."""
        with self._lock:
            if self.paused_until is not None and now < self.paused_until:
                return self.paused_until - now
            if now < self.retry_at:
                return self.retry_at - now
            return None

    def blocked_chats(self, now: float) -> set[str]:
        """Chats that must not start a message now: one in flight, or waiting out a backoff."""
        with self._lock:
            waiting = {c for c, t in self.chat_retry_at.items() if t > now}
            return waiting | set(self.busy)

    def suspect_chats(self) -> set[str]:
        """While paused, the chats whose head took part in the storm: not to be the probe (a
        message refused again says nothing about the backend). Empty once sending resumed."""
        with self._lock:
            return set(self._suspects.values()) if self.paused_until is not None else set()

    def free_slots(self, now: float) -> int:
        """How many more messages may start. While paused or down: one probe at a time."""
        if self.gate(now) is not None:
            return 0
        with self._lock:
            if self.paused_until is not None or self.down:
                return 0 if self.busy else 1
            return max(0, self.max_in_flight - len(self.busy))

    def choose(self, heads: Sequence[Q], slots: int) -> list[Q]:
        """The heads to start, by age (the chat whose oldest message is oldest). While the
        last answer was a failure, messages that have not failed before go first: so when
        slots are few — one probe while the backend looks sick, a lane going on to the next
        head, a foreground run — a message that keeps failing cannot pass for an outage and
        hold every chat behind it. Once anything went through, age alone decides again: a
        chat whose message failed once must not wait behind every untried backlog."""
        if slots <= 0:
            return []
        with self._lock:
            streak = self.failures > 0 or self.down or self.paused_until is not None
        return sorted(heads, key=lambda h: (streak and h.attempts > 0, h.id))[:slots]

    def next_wake(self, now: float) -> float | None:
        """Seconds until a waiting chat may go again (None: nothing is waiting)."""
        with self._lock:
            later = [t - now for t in self.chat_retry_at.values() if t > now]
        return min(later) if later else None

    def start(self, chat_guid: str, message_guid: str, wall: float) -> None:
        with self._lock:
            self.busy[chat_guid] = InFlight(chat_guid, message_guid, wall)

    def finish(self, chat_guid: str) -> None:
        with self._lock:
            self.busy.pop(chat_guid, None)

    def in_flight(self) -> list[InFlight]:
        with self._lock:
            return sorted(self.busy.values(), key=lambda f: f.started_wall)

    # -- learning from an answer --------------------------------------------------------------
    def decide(
        self,
        chat_guid: str,
        message_guid: str,
        attempts: int,
        outcome: HttpOutcome,
        decided: Verdict,
        now: float,
        sender: str = "",
    ) -> Decision:
        """Record one answer; `attempts` counts this one. Returns what to do with the message."""
        with self._lock:
            if decided is Verdict.DELIVERED:
                sent = now - outcome.elapsed_ms / 1000
                return self._delivered_now(chat_guid, message_guid, sent)
            if decided is Verdict.AUTH_PAUSED:
                return self._pause(f"auth_{outcome.status}", now, "auth_paused")
            if decided is Verdict.DEAD_LETTER:
                refusal = Refusal(message_guid, chat_guid, sender, outcome.status or 0, now)
                return self._refused(refusal, now)
            return self._failed(chat_guid, message_guid, attempts, outcome, now)

    def _delivered_now(self, chat_guid: str, message_guid: str, sent: float) -> Decision:
        self._delivered += 1
        self._accepted.add(chat_guid)
        self.failures = 0
        self._rounds = 0
        self._round_at = float("-inf")
        self.down = False
        self.retry_at = 0.0
        # An answer is evidence only about what happened after its request went: a reply the
        # orchestrator took 30 s to write, sent before a redeploy, neither lifts the pause the
        # redeploy caused nor clears the refusals it made (their messages would stay dead
        # letters when the storm is recognised a moment later).
        if sent >= self._paused_at:
            self.paused_until = self.pause_reason = None
        self._storm = [r for r in self._storm if r.at > sent]
        self.chat_retry_at.pop(chat_guid, None)
        self._failing_since.pop(message_guid, None)
        self._suspects.pop(message_guid, None)
        return Decision("delivered")

    def _pause(self, reason: str, now: float, action: str) -> Decision:
        if self.paused_until is None:
            self._paused_at = now
        self.paused_until = now + self.probe_interval
        self.pause_reason = reason
        return Decision(action, self.probe_interval, reason=reason)

    def _refused(self, refusal: Refusal, now: float) -> Decision:
        reason = f"rejected_{refusal.status}"
        guid = refusal.message_guid
        if self.paused_until is not None and self.pause_reason == reason:
            self._suspects[guid] = refusal.chat_guid  # the probe: still refused
            return self._pause(reason, now, "paused")
        if self._suspects.pop(guid, None) is not None:
            # Refused in a storm, and again now that sending resumed (the backend answered
            # 2xx since): it is this message after all. Counting it again would pause
            # everyone once more, put it back, and repeat for ever.
            return Decision("dead_letter")
        if any(r.status != refusal.status for r in self._storm):
            self._storm.clear()
        if all(r.message_guid != guid for r in self._storm):
            self._storm.append(refusal)
        if not is_storm(self._storm, self._accepted):
            return Decision("dead_letter")  # about this chat or sender: nobody else waits
        self._suspects.update((r.message_guid, r.chat_guid) for r in self._storm)
        earlier = tuple(r.message_guid for r in self._storm if r.message_guid != guid)
        decision = self._pause(reason, now, "paused")
        return Decision("paused", decision.wait, earlier, decision.reason)

    def _failed(
        self, chat_guid: str, message_guid: str, attempts: int, outcome: HttpOutcome, now: float
    ) -> Decision:
        if outcome.status == 429:
            # Rate limited per sender: this chat waits, nobody else does, and it is no sign
            # of an outage or of a bad message.
            wait = backoff_seconds(attempts, outcome.retry_after, self.max_backoff, self.rng)
            self.chat_retry_at[chat_guid] = now + wait
            return Decision("retry", wait)
        self.failures += 1
        if now - outcome.elapsed_ms / 1000 >= self._round_at:
            self._rounds += 1
            self._round_at = now
        if is_backend_down(outcome):
            # Nobody answered: the message is not the problem; every lane waits the same.
            self._judged_down()
            wait = backoff_seconds(self._rounds, None, self.max_backoff, self.rng)
            self.retry_at = max(self.retry_at, now + wait)
            return Decision("retry", wait)
        first = self._failing_since.setdefault(message_guid, self._delivered)
        if attempts >= self.poison_attempts and self._delivered > first:
            self._failing_since.pop(message_guid, None)
            return Decision(
                "dead_letter",
                reason=f"failed {attempts} times while other messages were delivered",
            )
        wait = backoff_seconds(attempts, outcome.retry_after, self.max_backoff, self.rng)
        self.chat_retry_at[chat_guid] = now + wait
        if self.failures >= DOWN_AFTER_FAILURES:
            self._judged_down()
            step = self._rounds - self._down_round + 1
            shared = backoff_seconds(step, None, self.max_backoff, self.rng)
            self.retry_at = max(self.retry_at, now + shared)
        return Decision("retry", wait)

    def _judged_down(self) -> None:
        # A success before the outage says nothing about a message failing during it: only
        # deliveries after the backend is back count as evidence against a message, or one
        # lucky answer at the start of a long outage would dead-letter whatever waits.
        if not self.down:
            self._down_round = self._rounds
        self.down = True
        self._failing_since.clear()

    def hold_chat(self, chat_guid: str, now: float, seconds: float) -> None:
        """An attempt broke off with an error of ours (a full disk): the chat waits a little."""
        with self._lock:
            self.chat_retry_at[chat_guid] = max(
                self.chat_retry_at.get(chat_guid, 0.0), now + seconds
            )

    def probe_now(self) -> None:
        """SIGHUP: a paused relay probes at once (the secret may have just been fixed)."""
        with self._lock:
            if self.paused_until is not None:
                self.paused_until = 0.0

    def forget_chat(self, chat_guid: str) -> None:
        """The chat's head left the queue (dead-lettered): its next message need not wait."""
        with self._lock:
            self.chat_retry_at.pop(chat_guid, None)
