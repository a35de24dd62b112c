"""Whether the relay may control Messages, as the daemon itself found it, and the operator's
request to ask.

The Automation grant belongs to the process that sends the Apple event (under the LaunchAgent:
"Archety Relay", see app_bundle): doctor run from Terminal would test Terminal's grant. The
daemon never raises the consent prompt on its own: nobody may be at the screen, and a prompt
left unanswered for about two minutes is stored as a denial that macOS 26 may not let the
Settings switch undo (nixfred/blip#36, openclaw#79323). So it looks quietly (consent.determine,
no prompt) at start and every few minutes while not allowed; a confirmed send proves it
allowed; and only `archety-relay automation-check`, run by someone watching the screen, asks
the daemon to send the real, prompting event (`count of accounts`) — through a request file in
the state directory, because only the daemon has the right identity. What it found is stored in
`<state dir>/automation.json` for doctor and automation-check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import jsonfile
from ..model import utc_iso
from . import app_bundle, consent

FILE = "automation.json"
REQUEST_FILE = "automation-request.json"
ALLOWED = "allowed"
NOT_ALLOWED = "not_allowed"
UNKNOWN = "unknown"
# Who found it: the quiet look, a send Messages recorded, the prompting check an operator asked.
BY_QUIET_PROBE = "quiet_probe"
BY_SEND = "send"
BY_CHECK = "automation_check"
NOT_ALLOWED_HINT = (
    "on the Mac's screen (Screen Sharing), run `archety-relay automation-check` and click OK "
    'when macOS asks whether Archety Relay may control Messages; after a "Don\'t Allow" or a '
    f"prompt nobody answered: tccutil reset AppleEvents {app_bundle.BUNDLE_ID}, then "
    "automation-check again"
)


def state_of(code: int | None) -> str:
    """What a quiet look's OSStatus means. -1743 (denied) and -1744 (would need consent: never
    answered, and also what a denial can read as without a prompt, openradar 44049802) are
    both "not allowed"; -600 (Messages not running) and None (no answer) say nothing."""
    if code == consent.ALLOWED:
        return ALLOWED
    if code in (consent.NOT_PERMITTED, consent.NEEDS_CONSENT):
        return NOT_ALLOWED
    return UNKNOWN


def describe(code: int | None) -> str:
    return {
        consent.ALLOWED: "allowed",
        consent.NOT_PERMITTED: "denied (-1743)",
        consent.NEEDS_CONSENT: "not answered yet, or denied (-1744)",
        consent.NOT_RUNNING: "unknown: Messages is not running (-600)",
        None: "unknown: no answer from macOS (not macOS?)",
    }.get(code, f"unknown (OSStatus {code})")


def record(state_dir: Path, state: str, detail: str | None, now: float, pid: int, by: str) -> None:
    data = {
        "ok": state == ALLOWED,
        "state": state,
        "error": None if state == ALLOWED else detail,
        "by": by,
        "checked_at": utc_iso(now),
        "at": now,
        "pid": pid,
    }
    jsonfile.write(state_dir / FILE, data)


def read(state_dir: Path) -> dict[str, Any] | None:
    return jsonfile.read(state_dir / FILE)


def request(state_dir: Path, now: float, wait_seconds: float) -> None:
    """automation-check asks the running daemon to send the prompting event."""
    jsonfile.write(state_dir / REQUEST_FILE, {"at": now, "wait": wait_seconds})


def take_request(state_dir: Path) -> float | None:
    """The wait an operator asked for (seconds), removing the request; None when none."""
    asked = jsonfile.read(state_dir / REQUEST_FILE)
    if asked is None:
        return None
    (state_dir / REQUEST_FILE).unlink(missing_ok=True)
    wait = asked.get("wait")
    return float(wait) if isinstance(wait, int | float) and 0 < wait <= 600 else 150.0
