"""A send handed to Messages that the dispatcher need not wait for: one thread per send.

osascript can take up to its 30 s timeout (a group Messages cannot reach, a busy Messages).
The dispatcher used to wait for each send in turn, so one hung send delayed every other chat's
replies (review 2026-12-04 #12). Now each send runs on a thread of its own; the dispatcher waits
for it a moment (`Underway.wait`), and if it is not back by then leaves it running, serves the
other chats, and records the outcome in a later step. Only the blocking call runs on the
thread: the outcome, an exception included, is handed back and recorded by the dispatcher.
At most a few sends are under way at once, and never two in one chat (bubbles keep their order).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..chatdb.guids import Target
from ..macos.messages_app import SendResult
from ..store import Outgoing


@dataclass
class Underway:
    item: Outgoing
    target: Target
    floor: int  # chat.db MAX(ROWID) before the send: only a newer row can be its record
    started: float  # the step's `now` when it was handed over
    _done: threading.Event = field(default_factory=threading.Event)
    _outcome: list[SendResult | Exception] = field(default_factory=list)

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

        def run() -> None:
            try:
                underway._outcome.append(send(target, item.text))
            except Exception as exc:  # recorded by the dispatcher, like a send that raised
                underway._outcome.append(exc)
            finally:
                underway._done.set()
                finished()

        threading.Thread(target=run, name=f"relay-send-{item.id}", daemon=True).start()
        return underway

    def wait(self, seconds: float) -> bool:
        """True once the send is back (waiting at most `seconds`)."""
        return self._done.wait(seconds)

    def outcome(self) -> SendResult:
        """What the send came to; an exception it raised is raised here, on the caller's
        thread."""
        result = self._outcome[0]
        if isinstance(result, Exception):
            raise result
        return result
