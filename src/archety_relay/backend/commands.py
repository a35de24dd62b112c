"""What an `/edge/sync` response asks of us, as typed actions. Pure functions.

    {"ack_events": ["evt-1", ...],
     "commands": [{"command_id": "c1", "command_type": "send_message", "params": {...}}, ...],
     "config_updates": {"sync_interval": 120, "heartbeat_interval": 30}}

Both dialects the backend has used are read (see README, "Talking back"): arguments under
`params` or `payload`, `chat_guid` or `thread_id`, `text` or `message_text`, `send_message` or
`send_message_now`, `cancel_message {message_id}` or `cancel_scheduled {schedule_id}`.

Each command becomes one action; a malformed or unknown one becomes `Invalid` with a reason
(acknowledged as `command_failed`, never an exception). Reading never raises: one poison value
(a non-finite number, an id past 2^63, a date in year 10000, a lone surrogate, JSON nested a
thousand deep) fails its own command, never the acknowledgements, the intervals or the other
commands of the same answer. Interval updates are clamped to sane ranges so a bad value from the
backend cannot make the relay spin or go silent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ..chatdb.guids import is_chat_guid
from ..model import FileToSend, clean_json, clean_text
from . import answers, files, rules

SYNC_INTERVAL_RANGE = (10.0, 3600.0)
HEARTBEAT_INTERVAL_RANGE = (5.0, 3600.0)
MAX_TEXT_CHARS = 20_000
MAX_ID_CHARS = 200
MAX_STATE_CHARS = 64_000  # a context, plan or event's data, as JSON
# list_scheduled answers a page at a time: its event goes out with a sync, which must stay small.
LIST_PAGE_SIZE = 50
MAX_LIST_PAGE = 100
# Ids we store and hand back are SQLite integers: 1 .. 2^63-1.
MAX_MESSAGE_ID = 2**63 - 1
# send_at must print as an ISO 8601 UTC time: 1970-01-01 up to 9999-12-31T23:59:59Z.
SEND_AT_RANGE = (0.0, 253_402_300_799.0)
# The other dialect's names for the same command.
ALIASES = {"send_message_now": "send_message", "cancel_scheduled": "cancel_message"}
NOT_SUPPORTED_YET: dict[str, str] = {}
# emit_event carried out per sync answer: each becomes an event to store and carry back, and a
# backend loop sending thousands must not crowd out the results of real commands.
MAX_EMITS_PER_ANSWER = 100


@dataclass(frozen=True)
class SendNow:
    command_id: str
    chat_guid: str  # "" until `with_chat` has looked chat_identifier up
    text: str
    reflex: bool = False  # bubble_type reflex: goes without the pacing gap
    chat_identifier: str | None = None  # the previous client's key, when no guid was given
    files: tuple[FileToSend, ...] = ()  # sent after the text ("" when only files), in order


@dataclass(frozen=True)
class Schedule:
    command_id: str
    chat_guid: str
    text: str
    send_at: float  # Unix time
    immediate: bool = False  # priority immediate: runs now, whatever send_at says
    chat_identifier: str | None = None
    files: tuple[FileToSend, ...] = ()


@dataclass(frozen=True)
class Cancel:
    command_id: str
    message_id: int
    command_type: str = "cancel_message"  # or "cancel_scheduled" (reported as schedule_id)


@dataclass(frozen=True)
class ListScheduled:
    """One page of the schedules (a page, so the event that answers it stays small)."""

    command_id: str
    status: str | None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class SetRule:
    command_id: str
    rule: rules.Rule


@dataclass(frozen=True)
class SetContext:
    """context_update (context set) or context_reset (context None), for every key given."""

    command_id: str
    command_type: str
    chat_keys: tuple[str, ...]
    context: dict[str, Any] | None
    notify_chat: str | None = None  # where notify_text goes (a real chat guid)
    notify_text: str | None = None
    reason: str | None = None
    notify_problem: str | None = None  # why a notify_text that was asked for is not sent
    notify_identifier: str | None = None  # the chat_identifier to look notify_chat up by


@dataclass(frozen=True)
class UpdatePlan:
    command_id: str
    chat_keys: tuple[str, ...]
    plan: Any


@dataclass(frozen=True)
class UploadRetry:
    """upload_retry: read an attachment's file again and upload it (see photos)."""

    command_id: str
    attachment_guid: str
    chat_guid: str | None


@dataclass(frozen=True)
class EmitEvent:
    command_id: str
    event_type: str
    payload: dict[str, Any]  # chat_guid, thread_id, room_id as given, details = event_data


@dataclass(frozen=True)
class Invalid:
    command_id: str
    command_type: str
    reason: str


Action = (
    SendNow
    | Schedule
    | Cancel
    | ListScheduled
    | SetRule
    | SetContext
    | UpdatePlan
    | EmitEvent
    | UploadRetry
    | Invalid
)


@dataclass(frozen=True)
class SyncResponse:
    ack_events: tuple[str, ...] = ()
    actions: tuple[Action, ...] = ()
    intervals: dict[str, float] = field(default_factory=dict)


def parse_response(body: str) -> SyncResponse:
    try:
        data = answers.loads(body) if body else {}
    except ValueError:
        return SyncResponse()
    if not isinstance(data, dict):
        return SyncResponse()
    acks = data.get("ack_events")
    raw_commands = data.get("commands")
    return SyncResponse(
        ack_events=tuple(clean_text(a) for a in acks if isinstance(a, str))
        if isinstance(acks, list)
        else (),
        actions=tuple(to_action(c) for c in raw_commands) if isinstance(raw_commands, list) else (),
        intervals=intervals(data.get("config_updates")),
    )


def cap_emits(actions: tuple[Action, ...]) -> tuple[tuple[Action, ...], tuple[EmitEvent, ...]]:
    """The actions to carry out, and the emit_event past MAX_EMITS_PER_ANSWER left out."""
    kept: list[Action] = []
    refused: list[EmitEvent] = []
    emits = 0
    for action in actions:
        if isinstance(action, EmitEvent):
            emits += 1
            if emits > MAX_EMITS_PER_ANSWER:
                refused.append(action)
                continue
        kept.append(action)
    return tuple(kept), tuple(refused)


def intervals(updates: Any) -> dict[str, float]:
    result: dict[str, float] = {}
    if not isinstance(updates, dict):
        return result
    for name, (low, high) in (
        ("sync_interval", SYNC_INTERVAL_RANGE),
        ("heartbeat_interval", HEARTBEAT_INTERVAL_RANGE),
    ):
        value = _number(updates.get(name))
        if value is not None:
            result[name] = min(high, max(low, value))
    return result


def _number(value: Any) -> float | None:
    """A JSON number as a float; an int too large for one is clamped, NaN is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(max(-(10**300), min(10**300, value)))
    return None if math.isnan(value) else value


def _chat(params: dict[str, Any]) -> str | None:
    value = params.get("chat_guid") or params.get("thread_id")
    # Only a real chat guid: it becomes an osascript argument (a leading "-" would be an option).
    if not isinstance(value, str) or not is_chat_guid(value) or clean_text(value) != value:
        return None
    return value


def _identifier(params: dict[str, Any]) -> str | None:
    """The previous client's chat key (chat.chat_identifier: `+15551234567`, `chat6553…`) where
    a command named its chat that way; looked up in chat.db (`with_chat`) before any send."""
    for name in ("chat_guid", "thread_id"):
        value = params.get(name)
        if (
            isinstance(value, str)
            and 0 < len(value) <= MAX_ID_CHARS
            and value.isprintable()
            and not value.startswith("-")
            and clean_text(value) == value
        ):
            return value
    return None


def with_chat(action: Action, lookup: Callable[[str], str | None]) -> Action:
    """An action that named its chat by chat_identifier, with that chat's guid from `lookup`
    (chat.db); a send to no known chat becomes Invalid, a notice that cannot go is noted."""
    if isinstance(action, (SendNow, Schedule)) and not action.chat_guid and action.chat_identifier:
        guid = lookup(action.chat_identifier)
        if guid is None or not is_chat_guid(guid):
            kind = "send_message" if isinstance(action, SendNow) else "schedule_message"
            return Invalid(action.command_id, kind, "no chat in chat.db has that thread_id")
        return replace(action, chat_guid=guid)
    if isinstance(action, SetContext) and action.notify_identifier:
        guid = lookup(action.notify_identifier)
        if guid is None or not is_chat_guid(guid):
            return replace(
                action,
                notify_text=None,
                notify_identifier=None,
                notify_problem="notify_text not sent: no chat in chat.db has that thread_id",
            )
        return replace(action, notify_chat=guid, notify_identifier=None)
    return action


def _chat_keys(params: dict[str, Any]) -> tuple[str, ...]:
    """Every key a chat was named by (its guid, or the previous client's chat_identifier)."""
    keys = []
    for name in ("chat_guid", "thread_id"):
        value = params.get(name)
        if isinstance(value, str) and value.strip() and len(value) <= MAX_ID_CHARS:
            key = clean_text(value.strip())
            if key not in keys:
                keys.append(key)
    return tuple(keys)


def _text(params: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if isinstance(value, str):
            text = clean_text(value)
            return text if text.strip() and len(text) <= MAX_TEXT_CHARS else None
    return None


def _text_given(params: dict[str, Any], *names: str) -> bool:
    """Whether a text with something in it was given (too long is then an error, not absent)."""
    return any(isinstance(params.get(n), str) and params[n].strip() for n in names)


def _id(value: Any) -> int | None:
    """A stored row's id as the backend hands it back: 1 .. 2^63-1, as a number or digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return None
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 20:
        value = int(value.strip())
    return value if isinstance(value, int) and 0 < value <= MAX_MESSAGE_ID else None


def _count(value: Any) -> int | None:
    """A JSON whole number from 0 to 2^63-1 (a row count or position), else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_MESSAGE_ID else None


def _state(value: Any) -> Any:
    """A JSON value we store and carry (context metadata, a plan, event data), cleaned."""
    cleaned = clean_json(value)
    if len(json.dumps(cleaned, ensure_ascii=False)) > MAX_STATE_CHARS:
        raise ValueError(f"larger than {MAX_STATE_CHARS} characters")
    return cleaned


def parse_time(value: Any) -> float | None:
    """ISO 8601 with an explicit zone ("Z" or an offset) as Unix time, within 1970..9999 UTC;
    anything else is None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if when.tzinfo is None:
            return None
        ts = when.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return ts if SEND_AT_RANGE[0] <= ts <= SEND_AT_RANGE[1] else None


def to_action(command: Any) -> Action:
    """One command object as an action; whatever it holds, never an exception."""
    if not isinstance(command, dict):
        return Invalid("", "", "a command must be an object")
    raw_id = command.get("command_id")
    command_id = (
        clean_text(str(raw_id))[:MAX_ID_CHARS]
        if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool)
        else ""
    )
    kind = command.get("command_type")
    kind = clean_text(kind)[:MAX_ID_CHARS] if isinstance(kind, str) else ""
    if not command_id:
        return Invalid("", kind, "missing command_id")
    try:
        return _action(command_id, kind, command)
    except Exception as exc:  # a value no check foresaw fails this command only
        return Invalid(command_id, kind, f"malformed command ({type(exc).__name__})")


def _action(command_id: str, kind: str, command: dict[str, Any]) -> Action:
    params = command.get("params")
    if not isinstance(params, dict):
        params = command.get("payload")
    if not isinstance(params, dict):
        params = {}
    canonical = ALIASES.get(kind, kind)
    if canonical in ("send_message", "schedule_message"):
        chat, text = _chat(params), _text(params, "text", "message_text")
        ident = None if chat else _identifier(params)
        if chat is None and ident is None:
            return Invalid(command_id, kind, "missing or malformed chat_guid or thread_id")
        attached = files.parse_attachments(params.get("attachments"))
        if isinstance(attached, str):
            return Invalid(command_id, kind, attached)
        if text is None and attached and not _text_given(params, "text", "message_text"):
            text = ""  # only files: text is optional then
        if text is None:
            return Invalid(command_id, kind, "missing, empty or too long text")
        if canonical == "send_message":
            reflex = params.get("bubble_type") == "reflex"
            return SendNow(command_id, chat or "", text, reflex, ident, attached)
        immediate = "immediate" in (command.get("priority"), params.get("priority"))
        send_at = parse_time(params.get("send_at"))
        if send_at is None and not immediate:
            return Invalid(
                command_id,
                kind,
                "send_at must be ISO 8601 with a time zone, between 1970 and 9999",
            )
        return Schedule(command_id, chat or "", text, send_at or 0.0, immediate, ident, attached)
    if canonical == "cancel_message":
        key = "schedule_id" if kind == "cancel_scheduled" else "message_id"
        raw = params.get(key, params.get("message_id", params.get("schedule_id")))
        message_id = _id(raw)
        if message_id is None:
            return Invalid(
                command_id, kind, f"{key} must be the id schedule_message gave (1 to 2^63-1)"
            )
        return Cancel(command_id, message_id, kind)
    if kind == "list_scheduled":
        status = params.get("status")
        limit, offset = params.get("limit", LIST_PAGE_SIZE), params.get("offset", 0)
        if _count(limit) is None or _count(offset) is None or not 1 <= limit <= MAX_LIST_PAGE:
            return Invalid(
                command_id,
                kind,
                f"limit must be 1 to {MAX_LIST_PAGE} and offset a whole number from 0",
            )
        return ListScheduled(
            command_id, clean_text(status) if isinstance(status, str) else None, limit, offset
        )
    if kind == "set_rule":
        rule = rules.parse(_state(params))
        return (
            Invalid(command_id, kind, rule) if isinstance(rule, str) else SetRule(command_id, rule)
        )
    if kind in ("context_update", "context_reset"):
        return _context(command_id, kind, params)
    if kind == "update_plan":
        keys = _chat_keys(params)
        if not keys:
            return Invalid(command_id, kind, "missing thread_id or chat_guid")
        if "plan_data" not in params:
            return Invalid(command_id, kind, "missing plan_data")
        return UpdatePlan(command_id, keys, _state(params["plan_data"]))
    if kind == "emit_event":
        return _emit(command_id, kind, params)
    if kind == "upload_retry":
        guid = params.get("attachment_guid")
        if not isinstance(guid, str) or not guid.strip() or len(guid) > MAX_ID_CHARS:
            return Invalid(command_id, kind, "missing or malformed attachment_guid")
        return UploadRetry(command_id, clean_text(guid.strip()), _chat(params))
    if kind in NOT_SUPPORTED_YET:
        return Invalid(command_id, kind, NOT_SUPPORTED_YET[kind])
    return Invalid(command_id, kind, f"unknown command_type {kind!r}")


def _context(command_id: str, kind: str, params: dict[str, Any]) -> Action:
    keys = _chat_keys(params)
    if not keys:
        return Invalid(command_id, kind, "missing chat_guid or thread_id")
    # The context is kept even when the notice cannot go (the previous client's thread_id is a
    # chat_identifier, not a guid); the event says why it was not sent.
    notify_text = _text(params, "notify_text")
    notify_chat = _chat(params)
    notify_identifier = None if notify_chat else _identifier(params)
    problem = None
    if notify_text is None or (notify_chat is None and notify_identifier is None):
        if params.get("notify_text") is not None:
            problem = "notify_text not sent: it needs a text and a chat"
        notify_text = notify_chat = notify_identifier = None
    if kind == "context_reset":
        reason = params.get("reason")
        return SetContext(
            command_id,
            kind,
            keys,
            None,
            notify_chat,
            notify_text,
            clean_text(reason)[:MAX_ID_CHARS] if isinstance(reason, str) else None,
            problem,
            notify_identifier,
        )
    app_id = params.get("app_id")
    if not isinstance(app_id, str) or not app_id.strip():
        return Invalid(command_id, kind, "missing app_id")
    state = params.get("state", "active")
    context = {
        "active_miniapp": clean_text(app_id),
        "room_id": _state(params.get("room_id")),
        "state": clean_text(state) if isinstance(state, str) else "active",
        "metadata": _state(params.get("metadata") or {}),
    }
    return SetContext(
        command_id,
        kind,
        keys,
        context,
        notify_chat,
        notify_text,
        notify_problem=problem,
        notify_identifier=notify_identifier,
    )


def _emit(command_id: str, kind: str, params: dict[str, Any]) -> Action:
    event_type = params.get("event_type")
    if not isinstance(event_type, str) or not event_type.strip() or len(event_type) > 64:
        return Invalid(command_id, kind, "event_type must be a short non-empty string")
    data = params.get("event_data", {})
    if not isinstance(data, dict):
        return Invalid(command_id, kind, "event_data must be an object")
    payload: dict[str, Any] = {
        name: _state(params[name])
        for name in ("chat_guid", "thread_id", "room_id")
        if params.get(name) is not None
    }
    payload["details"] = _state(data)
    return EmitEvent(command_id, clean_text(event_type.strip()), payload)
