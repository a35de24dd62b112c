"""The seams to macOS-only tools, gathered in one package. Elsewhere every call says it is not
macOS, unless a test passes `platform="darwin"` with a fake tool first on PATH.

    macos.run            runs one command line (launchctl …) with a deadline, as a value
    macos.launchagent    install / uninstall procedure around launchctl (waits, retries)

Command lines are built by `launchd` as argv lists; this package is the only one that runs them.
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
