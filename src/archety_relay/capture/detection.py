"""How fast new messages are noticed, kept by the daemon and shown by `status`.

For each captured message the daemon records what noticed it (`file_event`: the watcher woke
the capture; `timer`: only the periodic `data_version` check saw it; `held`/`retry`: a re-check)
and the delay from the message's own date to its capture. On a Mac this shows at once whether
file events work (issue #12.1): with them p50 is a few ms, without them about half the poll
interval. The recent figures go to `<state dir>/detection.json` (atomically replaced), which
`status` reads; the percentiles are plain functions of the figures.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from pathlib import Path
from typing import Any

from .. import jsonfile

FILE = "detection.json"
RECENT = 200
# The file is rewritten at most this often while messages arrive.
WRITE_INTERVAL_SECONDS = 2.0


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a figure that really happened)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1
    return ordered[index]


def summary(recent: list[dict[str, Any]]) -> dict[str, Any]:
    delays = [float(r["delay_ms"]) for r in recent]
    return {
        "messages": len(recent),
        "p50_ms": percentile(delays, 0.5),
        "p99_ms": percentile(delays, 0.99),
        "noticed_by": dict(Counter(str(r["via"]) for r in recent)),
    }


class Recorder:
    """The recent figures in memory, written out now and then (capture thread only)."""

    def __init__(self, state_dir: Path, watcher: str = "none") -> None:
        self.path = state_dir / FILE
        self.watcher = watcher
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._dirty = False
        self._written_at = float("-inf")
        self._lock = threading.Lock()

    def record(self, via: str, delay_s: float) -> None:
        with self._lock:
            self._recent.append({"via": via, "delay_ms": round(max(0.0, delay_s) * 1000, 1)})
            self._dirty = True

    def flush(self, now: float, *, force: bool = False) -> None:
        """Write the figures if there are new ones and the last write is old enough."""
        with self._lock:
            if not self._dirty or (not force and now - self._written_at < WRITE_INTERVAL_SECONDS):
                return
            recent = list(self._recent)
            self._dirty = False
            self._written_at = now
        data = {"watcher": self.watcher, "recent": recent, **summary(recent)}
        jsonfile.write(self.path, data)


def read(state_dir: Path) -> dict[str, Any] | None:
    return jsonfile.read(state_dir / FILE)
