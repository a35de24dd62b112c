"""The seam to macOS-only commands (launchctl). Elsewhere every call says it is not macOS.

Commands are built by `launchd` as argv lists; this module is the only one that runs them, so
tests on Linux check the argv and the Mac runs it.
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


def run(argv: list[str], timeout: float = 15.0) -> Ran:
    if not IS_MACOS:
        return Ran(argv, 127, "not macOS")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Ran(argv, 126, str(exc))
    return Ran(argv, done.returncode, (done.stdout + done.stderr).strip())
