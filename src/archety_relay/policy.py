"""What an HTTP outcome means for a queued message, and how long to wait. Pure functions.

2xx                                  delivered: remove from the outbox
no answer, timeout, reset, 5xx, 429  retry the same bytes after a capped, jittered backoff
                                     (or exactly what Retry-After asked, if longer)
401, 403                             auth paused: keep everything, probe once a minute
3xx                                  retry: a redirect is a misconfiguration, never a delivery
other 4xx                            dead letter: this message is refused, the queue goes on
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

BASE_BACKOFF_SECONDS = 0.5
# Retry-After beyond this is treated as this: a backend that asks for a day is misbehaving.
MAX_RETRY_AFTER_SECONDS = 3600.0


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    AUTH_PAUSED = "auth_paused"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class HttpOutcome:
    """What one request came to: a status, or the kind of failure that stood in for one."""

    status: int | None
    error: str | None = None  # "connect" | "timeout" | "reset" | "tls" | "other"
    retry_after: float | None = None  # seconds, parsed from the header
    body: str = ""  # the start of the response body, for dead letters and diagnostics
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def summary(self) -> str:
        """For people: "HTTP 503 in 12 ms" or "no answer (timeout)"."""
        if self.status is not None:
            return f"HTTP {self.status} in {self.elapsed_ms:.0f} ms"
        return f"no answer ({self.error})"


def verdict(outcome: HttpOutcome) -> Verdict:
    status = outcome.status
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (401, 403):
        return Verdict.AUTH_PAUSED
    if status == 429 or status >= 500 or 300 <= status < 400 or status < 200:
        return Verdict.RETRY
    return Verdict.DEAD_LETTER


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
    step = min(cap, BASE_BACKOFF_SECONDS * (2 ** max(0, failures - 1)))
    jittered = step / 2 + (rng or random).uniform(0, step / 2)
    if retry_after is not None and retry_after > 0:
        return max(jittered, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return jittered
