"""The seams to macOS-only tools: every call to launchctl, osascript, `security` and the
Keychain goes through this package, and no other package runs them. Elsewhere every call says it
is not macOS, unless a test passes `platform="darwin"` with a fake tool first on PATH.

    macos.run             runs one command line with a deadline, as a value (`Ran`)
    macos.launchd         the LaunchAgent's plist and launchctl's argv, built as values
    macos.launchctl       install / uninstall procedure around launchctl (waits, retries)
    macos.interpreter     which binary Full Disk Access must be granted to
    macos.keychain        the secret in the login Keychain (`security`, or keyring elsewhere)
    macos.messages_app    the only caller of osascript: sending through Messages.app
    macos.automation      whether the relay may control Messages, as the daemon found it

May import: chatdb (the pure `guids`), jsonfile and the top-level values; never config (config
reads the Keychain through here).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

IS_MACOS = sys.platform == "darwin"


@dataclass(frozen=True)
class Ran:
    argv: list[str]
    returncode: int
    output: str


def is_macos(platform: str | None = None) -> bool:
    return (platform or sys.platform) == "darwin"


def run(argv: list[str], timeout: float = 15.0, *, platform: str | None = None) -> Ran:
    if not is_macos(platform):
        return Ran(argv, 127, "not macOS")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Ran(argv, 126, str(exc))
    return Ran(argv, done.returncode, (done.stdout + done.stderr).strip())
