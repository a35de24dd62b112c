"""One check's result, and what a failing one means for scripts."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import EXIT_OK

FDA_LOCATION = "System Settings > Privacy & Security > Full Disk Access"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    exit_code: int = EXIT_OK  # what a failure of this check means for scripts
    skipped: bool = False
