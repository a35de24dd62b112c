"""The seams to macOS-only tools: every call to launchctl, osascript, `security` and the
Keychain goes through this package, and no other package runs them. Elsewhere every call says it
is not macOS, unless a test passes `platform="darwin"` with a fake tool first on PATH.

    macos.run             runs one command line with a deadline, as a value (`Ran`)
    macos.tool            Apple's tools by absolute path on a Mac, from PATH elsewhere
    macos.launchd         the LaunchAgent's plist and launchctl's argv, built as values
    macos.launchctl       install / uninstall procedure around launchctl (waits, retries)
    macos.interpreter     which binary Full Disk Access must be granted to
    macos.keychain        the secret in the login Keychain (`security`, or keyring elsewhere)
    macos.messages_app    the only caller of osascript: sending through Messages.app
    macos.messages_process  Messages.app running, started hidden, quit; the iMessage account's state
    macos.automation      whether the relay may control Messages, as the daemon found it

May import: chatdb (the pure `guids`), jsonfile and the top-level values; never config (config
reads the Keychain through here).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

IS_MACOS = sys.platform == "darwin"
# Where macOS keeps the tools the relay runs. On a Mac they are called by these paths, so a
# same-named program earlier on PATH (Homebrew's, a user's script) is never run in their place
# (../shared/notes/macos.md, "Paper check": "Call /usr/bin/osascript and /usr/bin/security by
# absolute path"). Elsewhere (tests on Linux) a stand-in first on PATH plays the tool.
APPLE_TOOLS = {
    "launchctl": "/bin/launchctl",
    "ps": "/bin/ps",
    "osascript": "/usr/bin/osascript",
    "security": "/usr/bin/security",
    "codesign": "/usr/bin/codesign",
    "plutil": "/usr/bin/plutil",
    "xcode-select": "/usr/bin/xcode-select",
    "cc": "/usr/bin/cc",
    "tccutil": "/usr/bin/tccutil",
    "open": "/usr/bin/open",
    "sw_vers": "/usr/bin/sw_vers",
    "pmset": "/usr/bin/pmset",
    "fdesetup": "/usr/bin/fdesetup",
    "defaults": "/usr/bin/defaults",
}


@dataclass(frozen=True)
class Ran:
    argv: list[str]
    returncode: int
    output: str


def is_macos(platform: str | None = None) -> bool:
    return (platform or sys.platform) == "darwin"


def tool(name: str) -> str | None:
    """The program to run for one of Apple's tools: its absolute path on a Mac, else whatever
    PATH finds (None: not there)."""
    if IS_MACOS and name in APPLE_TOOLS:
        return APPLE_TOOLS[name]
    return shutil.which(name)


def run(argv: list[str], timeout: float = 15.0, *, platform: str | None = None) -> Ran:
    """Run one command line; a bare Apple tool name in argv[0] is resolved by `tool`."""
    if not is_macos(platform):
        return Ran(argv, 127, "not macOS")
    program = tool(argv[0]) if argv and "/" not in argv[0] else None
    try:
        done = subprocess.run(
            [program or argv[0], *argv[1:]], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Ran(argv, 126, str(exc))
    return Ran(argv, done.returncode, (done.stdout + done.stderr).strip())
