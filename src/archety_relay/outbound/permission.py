"""Whether sends may go to Messages now: the Automation state as this daemon knows it.

The daemon must never raise the consent prompt with nobody at the screen (see macos.automation),
and any send to Messages before someone answered would raise it. So sends are held while the
quiet look (no prompt) says "not allowed" (-1743 or -1744), and while Messages is being started
for a look; held work stays queued (due longer than an hour ago it is reported missed, as
always). `step(now)` looks again every few minutes while not allowed, at once after a refusal,
and runs the prompting check only when an operator asked for it (`automation-check`).
A send Messages confirmed proves it allowed. Off macOS there is no answer: sends go.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import structlog

from ..macos import automation, consent, messages_app, run
from ..macos.messages_app import SendResult

log = structlog.get_logger("archety_relay.outbound")

# While not allowed, look again this often (a quiet look costs a few ms, but its answer is
# cached by macOS until the process restarts: openradar 44159926).
REPROBE_SECONDS = 300.0
# Messages was not running: it was started hidden; look again this soon.
LAUNCH_RECHECK_SECONDS = 10.0
MESSAGES_LAUNCH = ["open", "-g", "-j", "-b", consent.MESSAGES_BUNDLE_ID]


class Permission:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state = automation.UNKNOWN
        self.quiet: Callable[[], int | None] = consent.determine
        self.ask: Callable[[float], SendResult] = lambda wait: messages_app.automation_allowed(wait)
        self.launch: Callable[[], object] = lambda: run(MESSAGES_LAUNCH)
        self._look_at = float("-inf")  # when to look quietly next
        self._launching = False

    @property
    def held(self) -> bool:
        return self.state == automation.NOT_ALLOWED or self._launching

    def step(self, now: float) -> str | None:
        """One look if one is due (or asked for); the state it found, or None."""
        wait = automation.take_request(self.state_dir)
        if wait is not None:
            # An operator is watching the screen: the only time the prompt may be raised.
            log.info("automation_check_requested", wait_s=wait)
            result = self.ask(wait)
            state = automation.ALLOWED if result.ok else automation.NOT_ALLOWED
            self._set(state, result.error, now, automation.BY_CHECK)
            self._launching = False
            return state
        if self.state == automation.ALLOWED or now < self._look_at:
            return None
        code = self.quiet()
        if code == consent.NOT_RUNNING and not self._launching:
            # Nothing can be known until Messages runs: start it hidden (no Apple event of
            # ours, no prompt) and look again shortly; hold sends meanwhile.
            self._launching = True
            self.launch()
            self._look_at = now + LAUNCH_RECHECK_SECONDS
            return None
        self._launching = False
        self._look_at = now + REPROBE_SECONDS
        self._set(
            automation.state_of(code), automation.describe(code), now, automation.BY_QUIET_PROBE
        )
        return self.state

    def refused(self, error: str | None, now: float) -> None:
        """A send came back -1743/-1744: hold sends, look again at once."""
        self._set(automation.NOT_ALLOWED, error, now, automation.BY_SEND)
        self._look_at = now

    def confirmed(self, now: float) -> None:
        """Messages recorded a send: Automation is allowed, whatever a look said."""
        if self.state != automation.ALLOWED:
            self._set(automation.ALLOWED, None, now, automation.BY_SEND)

    def _set(self, state: str, detail: str | None, now: float, by: str) -> None:
        changed = state != self.state
        self.state = state
        automation.record(self.state_dir, state, detail, now, os.getpid(), by)
        if not changed:
            return
        if state == automation.NOT_ALLOWED:
            log.warning(
                "automation_not_allowed", by=by, error=detail, hint=automation.NOT_ALLOWED_HINT
            )
        else:
            log.info("automation_checked", state=state, by=by, detail=detail)
