"""What an HTTP outcome means for a queued message, and how long to wait. Pure functions.

2xx                                  delivered: remove from the outbox
no answer, timeout, reset, 5xx, 429  retry the same bytes after a capped, jittered backoff
408, 409, 423, 425                   (or exactly what Retry-After asked, if longer)
401, 403                             auth paused: keep everything, probe once a minute
3xx                                  retry: a redirect is a misconfiguration, never a delivery
other 4xx                            dead letter: this message is refused, the queue goes on —
                                     unless several different messages are refused alike (see
                                     lanes: that is the backend's problem, not theirs)
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

BASE_BACKOFF_SECONDS = 0.5
# Retry-After beyond this is treated as this: a backend that asks for a day is misbehaving.
MAX_RETRY_AFTER_SECONDS = 3600.0
# 2 ** this is far beyond any cap; bounding the exponent keeps the float finite after any
# number of failures (a 13-hour outage at a 60 s cap is 1,025 failures).
_MAX_EXPONENT = 30
# Timeout, conflict ("idempotent request still in progress"), locked, too early: the same
# message will be accepted later.
TRANSIENT_4XX = frozenset({408, 409, 423, 425})


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    AUTH_PAUSED = "auth_paused"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class HttpOutcome:
    """What one request came to: a status, or the kind of failure that stood in for one."""

    status: int | None
    error: str | None = None  # "connect" | "connect_timeout" | "timeout" | "reset" | "tls" |
    #                           "too_large" | "other"
    retry_after: float | None = None  # seconds, parsed from the header
    body: str = ""  # the whole response body (bounded by the backend client), UTF-8
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def excerpt(self) -> str:
        """The start of the body, for logs, dead letters and `status`."""
        return self.body[:BODY_EXCERPT_CHARS]

    def summary(self) -> str:
        """For people: "HTTP 503 in 12 ms" or "no answer (timeout)"."""
        if self.status is not None:
            return f"HTTP {self.status} in {self.elapsed_ms:.0f} ms"
        return f"no answer ({self.error})"


BODY_EXCERPT_CHARS = 2000


def verdict(outcome: HttpOutcome) -> Verdict:
    status = outcome.status
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (401, 403):
        return Verdict.AUTH_PAUSED
    if status in TRANSIENT_4XX:
        return Verdict.RETRY
    if status == 429 or status >= 500 or 300 <= status < 400 or status < 200:
        return Verdict.RETRY
    return Verdict.DEAD_LETTER


def is_backend_down(outcome: HttpOutcome) -> bool:
    """A failure that says nothing about the message and everything about the backend: nobody
    answered the connection. (A 5xx or a timeout may be this message's fault: see lanes.)"""
    return outcome.status is None and outcome.error in ("connect", "connect_timeout", "tls")


def backoff_seconds(
    failures: int,
    retry_after: float | None,
    cap: float,
    rng: random.Random | None = None,
) -> float:
    """Wait before retry number `failures` (1-based): exponential, jittered, capped.

    Jitter is "equal jitter": half the exponential step is fixed, half random, so waits still
    grow but many relays recovering from the same outage do not retry in lockstep.
    Retry-After is a floor: we never come back sooner than the backend asked.
    """
    exponent = min(max(0, failures - 1), _MAX_EXPONENT)
    step = min(cap, BASE_BACKOFF_SECONDS * (2**exponent))
    jittered = step / 2 + (rng or random).uniform(0, step / 2)
    if retry_after is not None and retry_after > 0:
        return max(jittered, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return jittered
