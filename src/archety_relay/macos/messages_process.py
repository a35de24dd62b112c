"""Messages.app as a process: is it running, start it without taking the screen, quit it, and
what its scripting dictionary says about the iMessage account.

Every call goes through `macos.run` (a deadline, an answer as a value, "not macOS" elsewhere);
tests put fake `pgrep`, `open`, `pkill` and `osascript` first on PATH and pass
`platform="darwin"`.

Public evidence, none of it checked on a real Mac by us (README "Unverified"):
- `open -g` does not bring the app to the foreground and `-j` launches it hidden (open(1));
  outbound.permission starts Messages for its quiet Automation look the same way.
- Messages' scripting dictionary: its service class has `enabled` ("Is the service
  enabled?"), `connection status` (connected / connecting / disconnected / disconnecting) and
  `service type` (iMessage …), as the scripting-bridge header generated from it shows
  (tingraldi/SwiftScripting `Frameworks/MessagesScripting/MessagesScripting/Messages.h`,
  `MessagesService`); the 4D Messages plugin lists the same three per service
  (miyako/4d-plugin-messages README). Recent macOS names that class `account` (the send script's
  `1st account whose service type = iMessage` works there); that it kept `enabled` and
  `connection status` is our assumption. Signed out of iMessage is taken to be the iMessage
  account disabled, disconnected, or absent (AppleScript -1728/-1719: no such account).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import run
from .consent import MESSAGES_BUNDLE_ID

PROCESS = "Messages"
QUIT_SCRIPT = ("with timeout of 10 seconds", 'tell application "Messages" to quit', "end timeout")
ACCOUNT_SCRIPT = (
    "with timeout of 10 seconds",
    'tell application "Messages"',
    "set a to (1st account whose service type = iMessage)",
    'return ((enabled of a) as text) & "," & ((connection status of a) as text)',
    "end tell",
    "end timeout",
)
# "Can't get account 1 whose …" / "Invalid index": there is no iMessage account at all.
NO_ACCOUNT = ("-1728", "-1719")
TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class Account:
    """The iMessage account as Messages scripts it; `known` False when it could not be asked."""

    known: bool
    signed_in: bool = True
    detail: str = ""


def _script(lines: tuple[str, ...]) -> list[str]:
    return ["osascript", *(arg for line in lines for arg in ("-e", line))]


def is_running(platform: str | None = None) -> bool | None:
    """True / False from `pgrep -x Messages` (exit 0 / 1); None when it could not tell."""
    ran = run(["pgrep", "-x", PROCESS], TIMEOUT_SECONDS, platform=platform)
    return {0: True, 1: False}.get(ran.returncode)


def launch_hidden(platform: str | None = None) -> bool:
    """Start Messages in the background, without taking focus from whoever uses the Mac."""
    argv = ["open", "-g", "-j", "-b", MESSAGES_BUNDLE_ID]  # by bundle id: the name is localised
    return run(argv, TIMEOUT_SECONDS, platform=platform).returncode == 0


def quit(platform: str | None = None) -> bool:
    """Ask Messages to quit; a Messages too hung to answer is ended with `pkill`."""
    if run(_script(QUIT_SCRIPT), TIMEOUT_SECONDS, platform=platform).returncode == 0:
        return True
    return run(["pkill", "-x", PROCESS], TIMEOUT_SECONDS, platform=platform).returncode == 0


def imessage_account(platform: str | None = None) -> Account:
    ran = run(_script(ACCOUNT_SCRIPT), TIMEOUT_SECONDS, platform=platform)
    if ran.returncode != 0:
        if any(code in ran.output for code in NO_ACCOUNT):
            return Account(True, False, "no iMessage account")
        return Account(False, detail=ran.output[:200])
    enabled, _, status = ran.output.strip().partition(",")
    signed_in = enabled.strip() == "true" and status.strip() not in ("disconnected", "dcon")
    return Account(True, signed_in, ran.output.strip()[:80])
