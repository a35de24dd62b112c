"""Which identity macOS asks about for the relay, and where in System Settings it is granted.

The LaunchAgent runs either the relay's own app ("Archety Relay", see app_bundle) or the venv's
Python directly (the fallback `install-service --identity python`). Full Disk Access and
Automation belong to whichever it is; doctor, doctor --live and install-service name it from the
installed plist, so the hint points at a row that exists. Pure functions over values.
"""

from __future__ import annotations

import plistlib
from dataclasses import dataclass
from pathlib import Path

from . import app_bundle, launchd

APP = "app"
PYTHON = "python"
KINDS = (APP, PYTHON)
FDA_PATH = "System Settings > Privacy & Security > Full Disk Access"
AUTOMATION_PATH = "System Settings > Privacy & Security > Automation"
# Python.app (python.org and Homebrew framework builds) declares this bundle id.
PYTHON_BUNDLE_ID = "org.python.python"


@dataclass(frozen=True)
class Identity:
    kind: str  # APP | PYTHON
    name: str  # as System Settings lists it
    grant: str  # what to add under Full Disk Access (⇧⌘G to type the path)
    bundle_id: str

    def fda_hint(self) -> str:
        return f"{FDA_PATH} > + > {self.grant} (listed as {self.name}), then restart the relay"

    def automation_hint(self) -> str:
        hint = (
            f"{AUTOMATION_PATH} > {self.name} > Messages; the first time, run "
            "`archety-relay automation-check` from Screen Sharing and click OK; after a "
            f'"Don\'t Allow" (or an unanswered prompt): tccutil reset AppleEvents {self.bundle_id}'
        )
        if self.kind == PYTHON:
            hint += (
                " (Python.app has no NSAppleEventsUsageDescription, so macOS may deny without "
                "asking and never list it: reinstall with `install-service --identity app`)"
            )
        return hint


def of_app(app: Path) -> Identity:
    return Identity(APP, app_bundle.APP_NAME, str(app), app_bundle.BUNDLE_ID)


def of_python(fda_target: str) -> Identity:
    """`fda_target` is the interpreter's grant target (interpreter.real_interpreter())."""
    return Identity(PYTHON, Path(fda_target).stem or "Python", fda_target, PYTHON_BUNDLE_ID)


def of_program(program: str, python_fda_target: str) -> Identity:
    """The identity of a LaunchAgent whose ProgramArguments start with `program`."""
    marker = ".app/Contents/MacOS/"
    if marker in program:
        return of_app(Path(program[: program.index(marker) + len(".app")]))
    return of_python(python_fda_target)


def installed(home: Path, python_fda_target: str) -> Identity | None:
    """The identity of the installed LaunchAgent, or None when none is installed (or unreadable)."""
    try:
        plist = plistlib.loads(launchd.agent_path(home).read_bytes())
        program = str((plist.get("ProgramArguments") or [""])[0])
    except (OSError, ValueError, IndexError):
        return None
    return of_program(program, python_fda_target)
