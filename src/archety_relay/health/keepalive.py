"""Messages.app kept alive: relaunched when it is not running, restarted when it hangs, and
the iMessage account watched for a sign-out. Each finding is an alert (`health.checks`).

- not running → launched in the background (no focus taken), `messages_not_running` raised,
  and cleared at the next look that finds it running;
- osascript timing out on TIMEOUTS_BEFORE_RESTART sends in a row → Messages quit and reopened,
  `messages_unresponsive` raised (cleared by the next send that works), at most once every
  RESTART_INTERVAL_SECONDS: a Mac that hangs Messages again at once needs a person, not a loop.
  The send itself is retried by the outgoing queue as for any timeout (it looks in chat.db
  first, so a send that did go out is not sent twice);
- the iMessage account disabled or disconnected → `imessage_signed_out`, cleared when it is
  back.
Steps take `now`; every outside call goes through `macos.messages_process`.
"""

from __future__ import annotations

import structlog

from ..macos import is_macos, messages_process
from ..macos.messages_app import SendResult
from ..store import Store
from .checks import IMESSAGE_SIGNED_OUT, MESSAGES_NOT_RUNNING, MESSAGES_UNRESPONSIVE

log = structlog.get_logger("archety_relay.keepalive")

TIMEOUTS_BEFORE_RESTART = 2
RESTART_INTERVAL_SECONDS = 600.0
TIMED_OUT = "did not finish within"  # messages_app's words for an osascript past its deadline


def should_restart(timeouts_in_a_row: int, last_restart_at: float, now: float) -> bool:
    return (
        timeouts_in_a_row >= TIMEOUTS_BEFORE_RESTART
        and now - last_restart_at >= RESTART_INTERVAL_SECONDS
    )


class MessagesKeeper:
    def __init__(self, store: Store, platform: str | None = None) -> None:
        self.store = store
        self.platform = platform
        self.timeouts_in_a_row = 0
        self.last_restart_at = float("-inf")

    def check(self, now: float, *, may_script: bool) -> int:
        """One look at Messages.app; returns how many alert events were stored. The account
        is read with an Apple event, so only when `may_script` (Automation known to be
        allowed): any earlier one would raise the consent prompt with nobody at the screen
        (see outbound.permission)."""
        if not is_macos(self.platform):
            return 0
        running = messages_process.is_running(self.platform)
        if running is None:
            return 0
        if not running:
            raised = self.store.raise_alert(MESSAGES_NOT_RUNNING, now, now)
            launched = messages_process.launch_hidden(self.platform)
            log.warning("messages_not_running", launched=launched)
            return int(raised)
        events = int(self.store.clear_alert(MESSAGES_NOT_RUNNING, now))
        if not may_script:
            return events
        account = messages_process.imessage_account(self.platform)
        if not account.known:
            return events
        if account.signed_in:
            return events + int(self.store.clear_alert(IMESSAGE_SIGNED_OUT, now))
        if self.store.raise_alert(IMESSAGE_SIGNED_OUT, now, now):
            log.error(
                "imessage_signed_out",
                detail=account.detail,
                hint="sign in to iMessage in Messages > Settings > iMessage on this Mac",
            )
            return events + 1
        return events

    def observe_send(self, result: SendResult, now: float) -> int:
        """Count osascript timeouts in a row; restart Messages when they say it hangs. Returns
        how many alert events were stored."""
        if result.ok:
            self.timeouts_in_a_row = 0
            return int(self.store.clear_alert(MESSAGES_UNRESPONSIVE, now))
        if TIMED_OUT not in (result.error or ""):
            self.timeouts_in_a_row = 0
            return 0
        self.timeouts_in_a_row += 1
        if not is_macos(self.platform):
            return 0
        if not should_restart(self.timeouts_in_a_row, self.last_restart_at, now):
            return 0
        self.last_restart_at = now
        self.timeouts_in_a_row = 0
        quit_ok = messages_process.quit(self.platform)
        launched = messages_process.launch_hidden(self.platform)
        log.warning("messages_restarted", reason="send_timeouts", quit=quit_ok, launched=launched)
        return int(
            self.store.raise_alert(
                MESSAGES_UNRESPONSIVE, now, now, {"action": "restarted", "timeouts_in_a_row": 2}
            )
        )
