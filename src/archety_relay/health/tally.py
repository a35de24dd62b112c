"""Running counts the relay's steps add to and `/metrics` reads: plain numbers behind one lock.

Counters only ever grow while the process lives (Prometheus expects a restart to reset them).
Latencies are kept as cumulative histogram buckets, so a scrape costs the same after a month.
Nothing here names a chat, a handle or a text: labels are fixed words (an outcome, a kind).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field

# Seconds. Detection is sub-second when the watcher works and ~poll interval when it does not;
# delivery includes the backend's answer (an LLM reply: several seconds) and any backoff.
DETECTION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
DELIVERY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; +Inf last
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, count at or below it) pairs, ending with +Inf: the exposition's form."""
        running, out = 0, []
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(frozen=True)
class TallyView:
    """A consistent copy for one scrape."""

    captured: int
    delivered: int
    attempts: dict[str, int]
    sends: dict[str, int]
    outcomes: dict[str, int]
    delivery_latency: tuple[list[tuple[str, int]], float]
    detection_latency: tuple[list[tuple[str, int]], float]
    backend_ok_at: float | None
    backend_failed_since: float | None


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.captured = 0
        self.delivered = 0
        self.attempts: Counter[str] = Counter()
        self.sends: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()  # receipts: delivered / not_delivered
        self.delivery_latency = Histogram(DELIVERY_BUCKETS)
        self.detection_latency = Histogram(DETECTION_BUCKETS)
        self.backend_ok_at: float | None = None
        self.backend_failed_since: float | None = None

    def captured_messages(self, ages: list[float]) -> None:
        """Messages moved into the outbox, with how long after their date each was noticed."""
        with self._lock:
            self.captured += len(ages)
            for age in ages:
                self.detection_latency.observe(max(0.0, age))

    def attempt(self, outcome: str, latency: float | None = None) -> None:
        """One answer (or failure) from the backend for one message; `latency` (message date to
        2xx) when it was delivered."""
        with self._lock:
            self.attempts[outcome] += 1
            if outcome == "delivered":
                self.delivered += 1
                if latency is not None:
                    self.delivery_latency.observe(max(0.0, latency))

    def sent(self, outcome: str) -> None:
        with self._lock:
            self.sends[outcome] += 1

    def outcome(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.outcomes[kind] += n

    def backend(self, reachable: bool, now: float) -> None:
        """Whether the backend answered (any status below 500) at wall-clock `now`."""
        with self._lock:
            if reachable:
                self.backend_ok_at = now
                self.backend_failed_since = None
            elif self.backend_failed_since is None:
                self.backend_failed_since = now

    def view(self) -> TallyView:
        with self._lock:
            return TallyView(
                captured=self.captured,
                delivered=self.delivered,
                attempts=dict(self.attempts),
                sends=dict(self.sends),
                outcomes=dict(self.outcomes),
                delivery_latency=(self.delivery_latency.cumulative(), self.delivery_latency.total),
                detection_latency=(
                    self.detection_latency.cumulative(),
                    self.detection_latency.total,
                ),
                backend_ok_at=self.backend_ok_at,
                backend_failed_since=self.backend_failed_since,
            )
