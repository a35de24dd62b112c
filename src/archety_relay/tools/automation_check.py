"""`archety-relay automation-check`: raise the Automation prompt while someone watches.

The grant must go to the relay's identity, so the running daemon sends the prompting event
(macos.automation's request file) and this waits for what it found. With no daemon running it
asks from this process instead, which tests this shell's own identity (Terminal, sshd), and says
so. The osascript of the check is killed after `wait` seconds: a prompt macOS shows for about
two minutes and then stores as a denial (nixfred/blip#36) is not left behind unanswered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..macos import automation, messages_app
from ..pidlock import running_pid

DEFAULT_WAIT_SECONDS = 150.0
# The daemon looks for a request at least every 5 s; the check itself is killed after `wait`.
DAEMON_SLACK_SECONDS = 20.0
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Answer:
    allowed: bool
    detail: str | None
    by_daemon: bool  # False: asked from this process (this shell's identity)
    pid: int | None = None


def check(
    state_dir: Path,
    wait: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Answer | None:
    """Ask the running daemon (or this process when none runs); None when a running daemon did
    not answer in time."""
    pid = running_pid(state_dir)
    if pid is None:
        here = messages_app.automation_allowed(wait)
        return Answer(here.ok, here.error, by_daemon=False)
    asked_at = clock()
    automation.request(state_dir, asked_at, wait)
    deadline = asked_at + wait + DAEMON_SLACK_SECONDS
    while clock() < deadline:
        found = automation.read(state_dir)
        if found and found.get("by") == automation.BY_CHECK and found.get("at", 0) >= asked_at:
            return Answer(bool(found.get("ok")), found.get("error"), True, found.get("pid"))
        sleep(POLL_SECONDS)
    (state_dir / automation.REQUEST_FILE).unlink(missing_ok=True)
    return None
