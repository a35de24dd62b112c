"""Reading our own JSON-lines log for people: parse, filter, format. Pure functions."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ..redact import RESPONSE_FIELDS, scrub_body
from ..terminal import escape_controls

LEVEL_ORDER = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_FIRST = ("timestamp", "level", "event", "logger")
# What to do when an event shows up in `logs --errors`; the event's own hint wins.
ADVICE = {
    "auth_rejected": "the backend rejected RELAY_WEBHOOK_SECRET: run `archety-relay set-secret` "
    "with the current secret (or fix .env); sending resumes by itself",
    "chatdb_unavailable": "grant Full Disk Access to the interpreter `archety-relay doctor` "
    "names, then restart the agent",
    "backend_unavailable": "the backend is down or unreachable; messages stay queued",
    "message_dead_lettered": "the backend refused one message; `archety-relay status` lists "
    "it, `archety-relay retry-dead` re-queues it",
}


def parse(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def timestamp(event: dict[str, Any]) -> float | None:
    raw = event.get("timestamp")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def keep(event: dict[str, Any], *, errors_only: bool, since: float | None) -> bool:
    if errors_only and LEVEL_ORDER.get(str(event.get("level")), 0) < LEVEL_ORDER["warning"]:
        return False
    if since is not None:
        ts = timestamp(event)
        if ts is None or ts < since:
            return False
    return True


def format_event(event: dict[str, Any], *, advise: bool = False) -> str:
    """One event as one line (plus an advice line); nothing in it can steer the terminal."""
    ts = str(event.get("timestamp", ""))[:19].replace("T", " ")
    level = str(event.get("level", "?")).upper()
    name = str(event.get("event", "?"))
    fields = " ".join(
        f"{k}={_value(scrub_body(v) if k in RESPONSE_FIELDS and isinstance(v, str) else v)}"
        for k, v in event.items()
        if k not in _FIRST and k != "hint"
    )
    line = escape_controls(f"{ts} {level:<7} {name:<28} {fields}".rstrip())
    hint = event.get("hint") or (ADVICE.get(name) if advise else None)
    if hint and (advise or LEVEL_ORDER.get(level.lower(), 0) >= LEVEL_ORDER["warning"]):
        line += f"\n    → {escape_controls(str(hint))}"
    return line


def format_raw(line: str) -> str:
    """A line that is not one of our events (a traceback, a foreign line), printable."""
    return escape_controls(line.rstrip("\n"))


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v if v and " " not in v else json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False)
