"""The only caller of osascript: sending a message through Messages.app.

The text and the chat guid are passed as *arguments* to an `on run argv` script, never spliced
into AppleScript source, so no text can inject script (quotes, backslashes, `end tell`...).
osascript reads options until the first non-option argument, so `--` ends them before ours and
the chat guid must look like one (`chat_guid.is_chat_guid`): nothing we pass is read as an option.
On Linux there is no osascript; tests put a fake one first on PATH that records its argv.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from .chat_guid import is_chat_guid

SCRIPT = (
    "on run argv",
    "set chatId to item 1 of argv",
    "set messageText to item 2 of argv",
    'tell application "Messages"',
    "send messageText to chat id chatId",
    "end tell",
    "end run",
)
SEND_TIMEOUT_SECONDS = 30.0
# AppleScript's "Not authorized to send Apple events" (Automation permission missing).
NOT_AUTHORIZED = "-1743"
AUTOMATION_HINT = (
    "allow the relay's Python to control Messages: System Settings > Privacy & Security > "
    "Automation > (the interpreter) > Messages"
)


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None
    retryable: bool = True


def automation_allowed(timeout: float = 15.0) -> SendResult:
    """Whether this process may control Messages (asks Messages for its name)."""
    return _run(
        lambda osascript: [osascript, "-e", 'tell application "Messages" to get name'], timeout
    )


def send_argv(chat_guid: str, text: str, osascript: str = "osascript") -> list[str]:
    argv = [osascript]
    for line in SCRIPT:
        argv += ["-e", line]
    return [*argv, "--", chat_guid, text]


def refusal(chat_guid: str, text: str) -> str | None:
    """Why this send must not reach osascript at all (never worth retrying), or None."""
    if not is_chat_guid(chat_guid):
        return "invalid_chat_guid: not a Messages chat guid (service;-;handle or service;+;chat…)"
    if "\x00" in text:
        return "invalid_text: contains a NUL character, which cannot be passed to osascript"
    return None


def send(chat_guid: str, text: str, timeout: float = SEND_TIMEOUT_SECONDS) -> SendResult:
    refused = refusal(chat_guid, text)
    if refused is not None:
        return SendResult(False, refused, retryable=False)
    return _run(lambda osascript: send_argv(chat_guid, text, osascript), timeout)


def _run(argv: Callable[[str], list[str]], timeout: float) -> SendResult:
    """Run osascript; what went wrong, if anything, as a value (retryable or not)."""
    osascript = shutil.which("osascript")
    if osascript is None:
        return SendResult(False, "osascript not found (not macOS?)", retryable=False)
    try:
        done = subprocess.run(argv(osascript), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return SendResult(False, f"osascript did not finish within {timeout:g}s")
    except OSError as exc:
        return SendResult(False, f"osascript could not run: {exc}")
    except ValueError as exc:  # an argument subprocess cannot pass (embedded NUL): never will
        return SendResult(False, f"osascript could not be given its arguments: {exc}", False)
    if done.returncode == 0:
        return SendResult(True)
    detail = (done.stderr or done.stdout).strip()[:300]
    if NOT_AUTHORIZED in detail:
        return SendResult(
            False, f"automation_permission_missing: {AUTOMATION_HINT}", retryable=False
        )
    return SendResult(False, f"osascript exit {done.returncode}: {detail}")
