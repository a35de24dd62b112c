"""The only caller of osascript: sending a message through Messages.app.

The text and the chat guid are passed as *arguments* to an `on run argv` script, never spliced
into AppleScript source, so no text can inject script (quotes, backslashes, `end tell`...).
osascript reads options until the first non-option argument, so `--` ends them before ours and
the chat guid must look like one (`chat_guid.is_chat_guid`): nothing we pass is read as an option.
On Linux there is no osascript; tests put a fake one first on PATH that records its argv.

osascript exiting 0 does not mean Messages sent anything (macOS 26 can "succeed" and write an
empty, unjoined row): the caller confirms every send in chat.db (see outbound).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..chatdb.guids import Target, is_chat_guid
from . import tool

# argv: chat guid, text, handle ("" for a group), service, the guid's other spelling ("" if none),
# and a file's POSIX path ("" for text). A file is sent instead of the text, through the same
# chat forms: `POSIX file … as alias`, the form imsg uses (openclaw/imsg MessageSender.swift), which
# works for files staged under ~/Library/Messages (anthropics/claude-plugins-official#1113).
# The coercion fails here (not inside Messages) when the file is missing: "file_unreadable".
# -1728 is "Can't get chat id …": try the next form. Anything else is the answer.
SCRIPT = (
    "on run argv",
    "set chatId to item 1 of argv",
    "set messageText to item 2 of argv",
    "set handleId to item 3 of argv",
    "set serviceName to item 4 of argv",
    "set altChatId to item 5 of argv",
    "set payload to messageText",
    'if (length of argv) > 5 and item 6 of argv is not "" then',
    "try",
    "set payload to (POSIX file (item 6 of argv)) as alias",
    "on error errText number errNum",
    'error "file_unreadable: " & errText number errNum',
    "end try",
    "end if",
    "with timeout of 20 seconds",
    'tell application "Messages"',
    "try",
    "send payload to chat id chatId",
    'return "chat_id"',
    "on error errText number errNum",
    "if errNum is not -1728 then error errText number errNum",
    "end try",
    'if altChatId is not "" then',
    "try",
    "send payload to chat id altChatId",
    'return "alt_chat_id"',
    "on error errText number errNum",
    "if errNum is not -1728 then error errText number errNum",
    "end try",
    "end if",
    'if handleId is "" then error "group_send_unsupported: no chat with this id (-1728)" '
    "number -1728",
    'if serviceName is "iMessage" then',
    "send payload to participant handleId of (1st account whose service type = iMessage)",
    "else",
    "send payload to participant handleId of (1st account whose service type = SMS)",
    "end if",
    'return "participant"',
    "end tell",
    "end timeout",
    "end run",
)
# A real read-only Apple event: `get name` is answered without one (and without permission).
PROBE_SCRIPT = (
    "with timeout of 10 seconds",
    'tell application "Messages" to count of accounts',
    "end timeout",
)
SEND_TIMEOUT_SECONDS = 30.0
# The start of the error of a send osascript did not finish in time (retryable).
TIMED_OUT = "osascript did not finish"
PROBE_TIMEOUT_SECONDS = 15.0
# AppleScript's "Not authorized to send Apple events" (-1743), and "would require user consent"
# (-1744, errAEEventWouldRequireUserConsent): both mean the relay may not control Messages.
NOT_AUTHORIZED = ("-1743", "-1744")
AUTOMATION_DENIED = "automation_permission_missing"
# "Can't get chat id …" after every form was tried, and "Can't make … into type …":
# trying again finds the same nothing.
NOT_FOUND = ("-1728", "-1700")
AUTOMATION_HINT = (
    "allow the relay to control Messages: System Settings > Privacy & Security > Automation > "
    "Archety Relay (or the Python it runs) > Messages; `archety-relay automation-check` asks"
)


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None
    retryable: bool = True
    via: str | None = None  # which form reached the chat: chat_id | alt_chat_id | participant
    message_guid: str | None = None  # the row Messages wrote for it, once confirmed


def automation_allowed(timeout: float = PROBE_TIMEOUT_SECONDS) -> SendResult:
    """Whether this process may control Messages: one real, read-only Apple event. It raises
    the consent prompt when nobody has answered yet: only for someone watching the screen."""
    return _run(lambda osascript: [osascript, *_lines(PROBE_SCRIPT)], timeout)


# A self-test that needs no permission (no Apple event): osascript must pass what follows `--`
# to the run handler intact, UTF-8 and a leading-dash-looking value included (../shared/notes/
# macos.md, "Paper check": BSD getopt consumes the `--`; to be proved on the Mac).
SELF_TEST_SCRIPT = (
    "on run argv",
    'return ((count of argv) as text) & "|" & item 1 of argv & "|" & item 2 of argv',
    "end run",
)
SELF_TEST_ARGS = ("a", "é😀-x")
SELF_TEST_EXPECTED = "2|a|é😀-x"


def argv_self_test(timeout: float = PROBE_TIMEOUT_SECONDS) -> str:
    """What osascript's run handler received for SELF_TEST_ARGS ("" when it did not run)."""
    osascript = tool("osascript")
    if osascript is None:
        return ""
    argv = [osascript, *_lines(SELF_TEST_SCRIPT), "--", *SELF_TEST_ARGS]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout if done.returncode == 0 else done.stderr).strip()[:200]


def _lines(script: tuple[str, ...]) -> list[str]:
    return [arg for line in script for arg in ("-e", line)]


def send_argv(
    target: Target, text: str, osascript: str = "osascript", file: str | None = None
) -> list[str]:
    return [
        osascript,
        *_lines(SCRIPT),
        "--",
        target.chat_guid,
        text,
        target.handle,
        target.service,
        target.alt_chat_guid,
        *([file] if file else []),
    ]


def refusal(chat_guid: str, text: str) -> str | None:
    """Why this send must not reach osascript at all (never worth retrying), or None."""
    if not is_chat_guid(chat_guid):
        return "invalid_chat_guid: not a Messages chat guid (service;-;handle or service;+;chat…)"
    if "\x00" in text:
        return "invalid_text: contains a NUL character, which cannot be passed to osascript"
    return None


def send(
    target: Target, text: str, file: str | None = None, timeout: float = SEND_TIMEOUT_SECONDS
) -> SendResult:
    """Send `text`, or the file at the absolute path `file` (staged where Messages may read it)."""
    refused = next((r for g in target.chat_guids if (r := refusal(g, text)) is not None), None)
    if file is not None and not file.startswith("/"):  # never an option, never relative
        refused = "invalid_file: not an absolute path"
    if refused is not None:
        return SendResult(False, refused, retryable=False)
    result = _run(lambda osascript: send_argv(target, text, osascript, file), timeout)
    if result.error and text.strip() and text.strip() in result.error:
        # AppleScript quotes the value it could not handle: never the message text in a log.
        result = replace(result, error=result.error.replace(text.strip(), "<message text>"))
    return result


def _run(argv: Callable[[str], list[str]], timeout: float) -> SendResult:
    """Run osascript; what went wrong, if anything, as a value (retryable or not)."""
    osascript = tool("osascript")  # /usr/bin/osascript on a Mac, never a PATH look-alike
    if osascript is None:
        return SendResult(False, "osascript not found (not macOS?)", retryable=False)
    try:
        done = subprocess.run(argv(osascript), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return SendResult(False, f"{TIMED_OUT} within {timeout:g}s")
    except OSError as exc:
        return SendResult(False, f"osascript could not run: {exc}")
    except ValueError as exc:  # an argument subprocess cannot pass (embedded NUL): never will
        return SendResult(False, f"osascript could not be given its arguments: {exc}", False)
    if done.returncode == 0:
        return SendResult(True, via=done.stdout.strip()[:40] or None)
    detail = (done.stderr or done.stdout).strip()[:300]
    denied = next((code for code in NOT_AUTHORIZED if code in detail), None)
    if denied is not None:
        return SendResult(False, f"{AUTOMATION_DENIED} ({denied}): {AUTOMATION_HINT}", False)
    if "file_unreadable" in detail:  # before NOT_FOUND: a failed coercion is -1700 too
        return SendResult(
            False, f"file_unreadable: osascript exit {done.returncode}: {detail}", False
        )
    if any(code in detail for code in NOT_FOUND):
        reason = "group_send_unsupported" if "group_send_unsupported" in detail else "no_such_chat"
        return SendResult(False, f"{reason}: osascript exit {done.returncode}: {detail}", False)
    return SendResult(False, f"osascript exit {done.returncode}: {detail}")
