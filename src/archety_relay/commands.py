"""What an `/edge/sync` response asks of us, as typed actions. Pure functions.

    {"ack_events": ["evt-1", ...],
     "commands": [{"command_id": "c1", "command_type": "send_message", "params": {...}}, ...],
     "config_updates": {"sync_interval": 120, "heartbeat_interval": 30}}

Each command becomes one action; a malformed or unknown one becomes `Invalid` with a reason
(acknowledged as `command_failed`, never an exception). Interval updates are clamped to sane
ranges so a bad value from the backend cannot make the relay spin or go silent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .chat_guid import is_chat_guid

SYNC_INTERVAL_RANGE = (10.0, 3600.0)
HEARTBEAT_INTERVAL_RANGE = (5.0, 3600.0)
MAX_TEXT_CHARS = 20_000


@dataclass(frozen=True)
class SendNow:
    command_id: str
    chat_guid: str
    text: str


@dataclass(frozen=True)
class Schedule:
    command_id: str
    chat_guid: str
    text: str
    send_at: float  # Unix time


@dataclass(frozen=True)
class Cancel:
    command_id: str
    message_id: int


@dataclass(frozen=True)
class ListScheduled:
    command_id: str
    status: str | None


@dataclass(frozen=True)
class Invalid:
    command_id: str
    command_type: str
    reason: str


Action = SendNow | Schedule | Cancel | ListScheduled | Invalid


@dataclass(frozen=True)
class SyncResponse:
    ack_events: tuple[str, ...] = ()
    actions: tuple[Action, ...] = ()
    intervals: dict[str, float] = field(default_factory=dict)


def parse_response(body: str) -> SyncResponse:
    try:
        data = json.loads(body) if body else {}
    except (ValueError, RecursionError):  # nested deeper than the parser's stack
        return SyncResponse()
    if not isinstance(data, dict):
        return SyncResponse()
    acks = data.get("ack_events")
    raw_commands = data.get("commands")
    return SyncResponse(
        ack_events=tuple(str(a) for a in acks) if isinstance(acks, list) else (),
        actions=tuple(to_action(c) for c in raw_commands if isinstance(c, dict))
        if isinstance(raw_commands, list)
        else (),
        intervals=intervals(data.get("config_updates")),
    )


def intervals(updates: Any) -> dict[str, float]:
    result: dict[str, float] = {}
    if not isinstance(updates, dict):
        return result
    for name, (low, high) in (
        ("sync_interval", SYNC_INTERVAL_RANGE),
        ("heartbeat_interval", HEARTBEAT_INTERVAL_RANGE),
    ):
        value = updates.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            result[name] = min(high, max(low, float(value)))
    return result


def _chat(params: dict[str, Any]) -> str | None:
    value = params.get("chat_guid") or params.get("thread_id")
    # Only a real chat guid: it becomes an osascript argument (a leading "-" would be an option).
    return value if is_chat_guid(value) else None


def _text(params: dict[str, Any]) -> str | None:
    value = params.get("text")
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT_CHARS:
        return None
    return value


def parse_time(value: Any) -> float | None:
    """ISO 8601 with an explicit zone ("Z" or an offset) as Unix time; anything else is None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def to_action(command: dict[str, Any]) -> Action:
    command_id = str(command.get("command_id") or "")
    kind = str(command.get("command_type") or "")
    params = command.get("params") if isinstance(command.get("params"), dict) else {}
    assert isinstance(params, dict)
    if not command_id:
        return Invalid("", kind, "missing command_id")
    if kind in ("send_message", "schedule_message"):
        chat, text = _chat(params), _text(params)
        if chat is None:
            return Invalid(command_id, kind, "missing or malformed chat_guid or thread_id")
        if text is None:
            return Invalid(command_id, kind, "missing, empty or too long text")
        if kind == "send_message":
            return SendNow(command_id, chat, text)
        send_at = parse_time(params.get("send_at"))
        if send_at is None:
            return Invalid(command_id, kind, "send_at must be ISO 8601 with a time zone")
        return Schedule(command_id, chat, text, send_at)
    if kind == "cancel_message":
        message_id = params.get("message_id")
        try:
            return Cancel(command_id, int(message_id))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return Invalid(command_id, kind, "message_id must be the id schedule_message gave")
    if kind == "list_scheduled":
        status = params.get("status")
        return ListScheduled(command_id, status if isinstance(status, str) else None)
    return Invalid(command_id, kind, f"unknown command_type {kind!r}")
