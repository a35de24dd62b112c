"""Carrying out one sync command: its work, its event and its seen mark in one transaction.

A command id seen before is not executed again. A command that fails while being carried out
(a value no check foresaw) is rolled back whole and reported as `command_failed` with the
reason; only a state database that cannot be written stops the sync (nothing was recorded, so
the backend's next answer brings the command again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from ..backend.commands import (
    Action,
    Cancel,
    EmitEvent,
    Invalid,
    ListScheduled,
    Schedule,
    SendNow,
    SetContext,
    SetRule,
    UpdatePlan,
    UploadRetry,
)
from ..errors import StateError
from ..model import utc_iso
from ..store import CommandTx, NewOutgoing, Outgoing, Store

log = structlog.get_logger("archety_relay.executor")

# Outgoing rows a `bubble_type: reflex` send makes: the dispatcher sends them without the
# per-chat pacing gap.
REFLEX_ORIGIN = "reflex"
# A listed schedule's text is cut here (`text_chars` gives its length): the list is for
# finding ids, and a page of 100 stays within a sync's event budget.
LIST_TEXT_CHARS = 500


def command_type(action: Action) -> str:
    if isinstance(action, (Invalid, Cancel, SetContext)):
        return action.command_type
    return {
        SendNow: "send_message",
        Schedule: "schedule_message",
        ListScheduled: "list_scheduled",
        SetRule: "set_rule",
        UpdatePlan: "update_plan",
        EmitEvent: "emit_event",
        UploadRetry: "upload_retry",
    }[type(action)]


def execute(store: Store, action: Action, now: float) -> bool:
    """Carry out one action. True when it stored something for Messages.app to send."""
    try:
        with store.command(action.command_id, now) as tx:
            if tx is None:
                log.info(
                    "command_duplicate_ignored",
                    command_id=action.command_id,
                    command_type=command_type(action),
                )
                return False
            return _carry_out(tx, action)
    except StateError:
        raise
    except Exception as exc:
        failed = Invalid(
            action.command_id,
            command_type(action),
            f"could not be carried out ({type(exc).__name__})",
        )
        with store.command(action.command_id, now) as tx:
            if tx is not None:
                _carry_out(tx, failed)
        return False


def _carry_out(tx: CommandTx, action: Action) -> bool:
    base: dict[str, Any] = {"command_id": action.command_id}
    kind = command_type(action)
    if isinstance(action, Invalid):
        tx.add_event(
            "command_failed", {**base, "details": {"command_type": kind, "reason": action.reason}}
        )
        log.warning(
            "command_failed", command_id=action.command_id, command_type=kind, reason=action.reason
        )
        return False
    if isinstance(action, (SendNow, Schedule)):
        return _send(tx, action, base)
    if isinstance(action, Cancel):
        done = tx.cancel(action.message_id)
        details: dict[str, Any] = {
            "command_type": kind,
            "message_id": action.message_id,
            "schedule_id": action.message_id,
        }
        if not done:
            details["reason"] = "no pending message with that id"
        tx.add_event(
            "command_completed" if done else "command_failed",
            {**base, "message_ids": [action.message_id] if done else [], "details": details},
        )
        log.info("command_cancel", command_id=action.command_id, cancelled=done)
        return False
    if isinstance(action, ListScheduled):
        tx.add_event("command_completed", {**base, "details": _schedule_page(tx, action)})
        return False
    if isinstance(action, SetRule):
        rule = action.rule
        tx.put_rule(rule.name, rule.source)
        tx.add_event(
            "command_completed",
            {
                **base,
                "details": {
                    "command_type": kind,
                    "rule": rule.name,
                    "rule_type": rule.rule_type,
                    "enabled": rule.enabled,
                },
            },
        )
        log.info("rule_set", rule=rule.name, rule_type=rule.rule_type, enabled=rule.enabled)
        return False
    if isinstance(action, SetContext):
        return _context(tx, action, base)
    if isinstance(action, UpdatePlan):
        tx.set_plan(action.chat_keys, action.plan)
        tx.add_event(
            "command_completed",
            {**base, "thread_id": action.chat_keys[0], "details": {"command_type": kind}},
        )
        return False
    if isinstance(action, UploadRetry):
        # Only queued here: the photos loop converts and uploads outside any transaction and
        # reports attachment_uploaded / attachment_unavailable with this command's id.
        tx.request_upload(action.attachment_guid, action.chat_guid, action.command_id)
        log.info("command_upload_retry", command_id=action.command_id, guid=action.attachment_guid)
        return False
    assert isinstance(action, EmitEvent)
    tx.add_event(action.event_type, {**base, **action.payload}, emitted=True)
    return False


def _schedule_page(tx: CommandTx, action: ListScheduled) -> dict[str, Any]:
    """One page of schedules, texts cut short: all of them in one event (120 of 16 KB made
    1.9 MB) went out first in every sync and was refused by any proxy's body limit."""
    page = tx.scheduled(action.status, action.limit, action.offset)
    total = tx.count_scheduled(action.status)
    end = action.offset + len(page)
    # A command's text and each of its files are rows of their own: each is listed with its
    # own message_id and the schedule_id of the command it came with.
    schedule_of = tx.schedule_ids(page)
    items = []
    for o in page:
        item: dict[str, Any] = {
            "message_id": o.id,
            "schedule_id": schedule_of[o.id],
            "chat_guid": o.chat_guid,
            "send_at": utc_iso(o.send_at),
            "status": o.status,
            "text": o.text[:LIST_TEXT_CHARS],
        }
        if len(o.text) > LIST_TEXT_CHARS:
            item["text_chars"] = len(o.text)  # cut: the full text is the one the backend sent
        if o.file is not None:
            item["attachments"] = [_listed_file(o)]
        items.append(item)
    return {
        "command_type": "list_scheduled",
        "scheduled": items,
        "total": total,
        "offset": action.offset,
        "next_offset": end if end < total else None,
    }


def _listed_file(o: Outgoing) -> dict[str, str | None]:
    """What a list says of a scheduled file: its name and type, never its URL. A signed URL
    carries its own credentials (in its query), and this event is stored and sent with every
    sync until the backend acknowledges it. The name is the backend's, or the staged file's
    once fetched; never one taken from the URL."""
    assert o.file is not None
    staged = Path(o.staged.path).name if o.staged is not None else None
    return {"filename": o.file.filename or staged, "mime_type": o.file.mime_type}


def _send(tx: CommandTx, action: SendNow | Schedule, base: dict[str, Any]) -> bool:
    if not action.chat_guid:  # named by chat_identifier and never looked up (commands.with_chat)
        raise ValueError("no chat guid")
    scheduled = isinstance(action, Schedule)
    send_at = action.send_at if isinstance(action, Schedule) and not action.immediate else tx.now
    kind = "schedule_message" if scheduled else "send_message"
    origin = REFLEX_ORIGIN if isinstance(action, SendNow) and action.reflex else kind
    # The text first, then each file in the order given: one row each, due together, so the
    # chat's order (send_at, id) sends them in that order.
    parts = [NewOutgoing(action.chat_guid, action.text, send_at, origin, action.command_id)]
    if not action.text:
        parts = []
    parts += [
        NewOutgoing(action.chat_guid, "", send_at, origin, action.command_id, file=f)
        for f in action.files
    ]
    ids = tx.add_outgoing(parts)
    details: dict[str, Any] = {"command_type": kind, "send_at": utc_iso(send_at)}
    if action.files:
        details["files"] = len(action.files)
    if scheduled:
        details["schedule_id"] = ids[0]  # what cancel_scheduled takes
    tx.add_event(
        "command_completed",
        {
            **base,
            "chat_guid": action.chat_guid,
            "thread_id": action.chat_guid,
            "message_ids": ids,
            "details": details,
        },
    )
    log.info(
        "command_accepted",
        command_id=action.command_id,
        command_type=kind,
        message_id=ids[0],
        send_at=utc_iso(send_at),
        chat_guid=action.chat_guid,
    )
    return True


def _context(tx: CommandTx, action: SetContext, base: dict[str, Any]) -> bool:
    tx.set_context(action.chat_keys, action.context)
    ids: list[int] = []
    if action.notify_text and action.notify_chat:
        ids = tx.add_outgoing(
            [
                NewOutgoing(
                    action.notify_chat,
                    action.notify_text,
                    tx.now,
                    action.command_type,
                    action.command_id,
                )
            ]
        )
    details: dict[str, Any] = {"command_type": action.command_type}
    if action.reason:
        details["reason"] = action.reason
    if action.notify_problem:
        details["notify"] = action.notify_problem
    tx.add_event(
        "command_completed",
        {
            **base,
            "chat_guid": action.notify_chat or action.chat_keys[0],
            "thread_id": action.chat_keys[-1],
            "message_ids": ids,
            "details": details,
        },
    )
    log.info("chat_context_set", command_type=action.command_type, keys=len(action.chat_keys))
    return bool(ids)
