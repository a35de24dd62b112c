"""A repeating error: logged once a minute with a count, and once more when it clears.

Litestream's habit. A step that keeps failing (chat.db unreadable, a full disk) is retried
soon and often; a log line, let alone a traceback, per try turned the rotated logs over in under
an hour (review 2026-12-04, #10). The operator still sees when it started, how often it failed,
and when it stopped.
"""

from __future__ import annotations

from typing import Any

from .errors import RelayError

INTERVAL_SECONDS = 60.0
# Retries of a failing step (full disk, chat.db unreadable) are at most this far apart.
MAX_BACKOFF_SECONDS = 10.0


def retry_in(failures: int) -> float:
    """Seconds before trying again after `failures` in a row: 1 s doubling to the cap."""
    return min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(failures, 8))


class ErrorLog:
    """One repeating error of one step, written to `log` as `event` and `event`_recovered."""

    def __init__(self, event: str, log: Any) -> None:
        self.event = event
        self.log = log
        self.since: float | None = None
        self.last_logged = 0.0
        self.count = 0

    def failed(self, exc: BaseException, now: float, **fields: Any) -> float:
        """Count a failure (log it if it is the first or a minute has passed); returns how
        long the step should wait before trying again."""
        self.count += 1
        if self.since is None:
            self.since = now
        if self.count == 1 or now - self.last_logged >= INTERVAL_SECONDS:
            self.last_logged = now
            fields.update(error=str(exc), failures=self.count)
            if isinstance(exc, RelayError):
                # Ours: the message and hint say what is wrong; a traceback would add nothing.
                if exc.hint:
                    fields["hint"] = exc.hint
                self.log.error(self.event, **fields)
            else:
                self.log.exception(self.event, **fields)
        return retry_in(self.count)

    def ok(self, now: float) -> None:
        if self.since is not None:
            self.log.info(
                self.event + "_recovered", after_s=round(now - self.since, 1), failures=self.count
            )
        self.since = None
        self.count = 0
