"""Small JSON files the daemon leaves in the state directory for the operator's commands
(what noticed recent messages, the Automation probe): written whole or not at all, read
without ever failing the reader."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically (a reader never sees half a file). Best effort: these are
    figures for `status` and `doctor`, never worth stopping the relay for."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


def read(path: Path) -> dict[str, Any] | None:
    """The object in `path`, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
