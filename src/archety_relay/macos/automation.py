"""Whether the relay may control Messages, as the daemon itself found it.

The Automation grant belongs to the process that sends the Apple event: doctor run from Terminal
would test Terminal's grant, not the LaunchAgent's. And `tell application "Messages" to get name`
is answered without an Apple event, so it passes with Automation denied. So the daemon probes
with a real, read-only event (`count of accounts`, see messages_app) at start and after a send
fails with -1743, and stores the answer in `<state dir>/automation.json` for doctor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import jsonfile
from ..model import utc_iso
from .messages_app import SendResult

FILE = "automation.json"


def record(state_dir: Path, result: SendResult, now: float, pid: int) -> None:
    data = {"ok": result.ok, "error": result.error, "checked_at": utc_iso(now), "pid": pid}
    jsonfile.write(state_dir / FILE, data)


def read(state_dir: Path) -> dict[str, Any] | None:
    return jsonfile.read(state_dir / FILE)
