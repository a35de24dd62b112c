"""Work handed off the dispatcher's step: a send to Messages, or the fetch of a file to send.

osascript can take up to its 30 s timeout (a group Messages cannot reach, a busy Messages).
The dispatcher used to wait for each send in turn, so one hung send delayed every other chat's
replies (review 2026-12-04 #12). Now each send runs on a thread of its own; the dispatcher waits
for it a moment (`Underway.wait`), and if it is not back by then leaves it running, serves the
other chats, and records the outcome in a later step. Only the blocking call runs on the
thread: the outcome, an exception included, is handed back and recorded by the dispatcher.
At most a few sends are under way at once, and never two in one chat (bubbles keep their order).

A file the persona sends is fetched the same way, as a `Job` (see fetches). The threads are
daemon threads: shutdown never waits for one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..chatdb.guids import Target
from ..macos.messages_app import SendResult
from ..store import Outgoing

T = TypeVar("T")


class Job(Generic[T]):
    """One blocking call on a daemon thread of its own; `finished` is called when it is back."""

    def __init__(self, call: Callable[[], T], name: str, finished: Callable[[], None]) -> None:
        self._done = threading.Event()
        self._outcome: list[T | Exception] = []

        def run() -> None:
            try:
                self._outcome.append(call())
            except Exception as exc:  # handed back, raised on the dispatcher's thread
                self._outcome.append(exc)
            finally:
                self._done.set()
                finished()

        threading.Thread(target=run, name=name, daemon=True).start()

    def wait(self, seconds: float) -> bool:
        """True once the call is back (waiting at most `seconds`)."""
        return self._done.wait(seconds)

    def outcome(self) -> T:
        """What the call returned; an exception it raised is raised here, on the caller's
        thread."""
        result = self._outcome[0]
        if isinstance(result, Exception):
            raise result
        return result


@dataclass
class Underway:
    item: Outgoing
    target: Target
    floor: int  # chat.db MAX(ROWID) before the send: only a newer row can be its record
    started: float  # the step's `now` when it was handed over
    _job: Job[SendResult] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        item: Outgoing,
        target: Target,
        floor: int,
        now: float,
        send: Callable[[Target, str], SendResult],
        finished: Callable[[], None],
    ) -> Underway:
        """Run `send` on a thread of its own; `finished` is called when it is back."""
        underway = cls(item, target, floor, now)
        underway._job = Job(lambda: send(target, item.text), f"relay-send-{item.id}", finished)
        return underway

    def wait(self, seconds: float) -> bool:
        """True once the send is back (waiting at most `seconds`)."""
        assert self._job is not None
        return self._job.wait(seconds)

    def outcome(self) -> SendResult:
        """What the send came to; an exception it raised is raised here."""
        assert self._job is not None
        return self._job.outcome()
