"""Whether the relay may control Messages, as the daemon itself found it.

The Automation grant belongs to the process that sends the Apple event: doctor run from Terminal
would test Terminal's grant, not the LaunchAgent's. And `tell application "Messages" to get name`
is answered without an Apple event, so it passes with Automation denied. So the daemon probes
with a real, read-only event (`count of accounts`, see messages_app) at start and after a send
fails with -1743, and stores the answer in `<state dir>/automation.json` for doctor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .messages_app import SendResult
from .model import utc_iso

FILE = "automation.json"


def record(state_dir: Path, result: SendResult, now: float, pid: int) -> None:
    data = {"ok": result.ok, "error": result.error, "checked_at": utc_iso(now), "pid": pid}
    tmp = state_dir / (FILE + ".tmp")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        os.replace(tmp, state_dir / FILE)
    except OSError:
        pass  # for the operator's doctor; never worth stopping the sender for


def read(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
