"""Sync commands' work, and what those commands keep: message rules and per-chat context.

A command is marked seen in the same transaction as its work and its event (`command()`), so a
crash or an error in between leaves neither: the backend's next sync brings it again. Rules are a
small table read whole into memory by `inbound`; chat state is read by key, one message's chat
at a time, and pruned by age and size. Both are written only by commands.
`record_rule_hit` stores what a rule did to one message (its event, its auto reply) once, even
when a crash makes capture read the same row again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .db import Transactional
from .outbox import _write_meta
from .outgoing import (
    NewOutgoing,
    Outgoing,
    cancel_pending,
    count_scheduled,
    insert_event,
    insert_outgoing,
    mark_seen,
    schedule_ids,
    select_scheduled,
)
from .uploads import request_upload

# What a rule did to a message is remembered as long as a delivered guid (an iCloud re-insert).
RULE_HIT_MEMORY_SECONDS = 7 * 86400
# A chat's context or plan not set (nor reset) for this long is forgotten by the prune; so is
# the oldest of them while all of it holds more than CHAT_STATE_MAX_BYTES (review 2026-12-04
# #16: 3,000 contexts of 60 KB made a 191 MB state file that nothing ever shrank).
CHAT_STATE_MEMORY_SECONDS = 30 * 86400
CHAT_STATE_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ChatState:
    """One chat key's stored context and plan, each with when it was last set or reset."""

    context: dict[str, Any] | None
    context_at: float | None
    plan: Any
    plan_at: float | None


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class CommandTx:
    """The work one command may do, all inside its one transaction."""

    def __init__(self, db: sqlite3.Connection, now: float) -> None:
        self._db = db
        self.now = now

    def add_outgoing(self, items: Sequence[NewOutgoing]) -> list[int]:
        return [insert_outgoing(self._db, item, self.now) for item in items]

    def cancel(self, message_id: int) -> bool:
        return cancel_pending(self._db, message_id, self.now)

    def scheduled(self, status: str | None, limit: int = -1, offset: int = 0) -> list[Outgoing]:
        return select_scheduled(self._db, status, limit, offset)

    def schedule_ids(self, rows: Sequence[Outgoing]) -> dict[int, int]:
        return schedule_ids(self._db, rows)

    def count_scheduled(self, status: str | None) -> int:
        return count_scheduled(self._db, status)

    def add_event(self, event_type: str, payload: dict[str, Any], *, emitted: bool = False) -> str:
        return insert_event(self._db, event_type, payload, self.now, emitted=emitted)

    def request_upload(self, attachment_guid: str, chat_guid: str | None, command_id: str) -> None:
        """upload_retry: the picture becomes pending again, for the photos loop (uploads)."""
        request_upload(self._db, attachment_guid, chat_guid, command_id, self.now)

    def put_rule(self, name: str, source: dict[str, Any]) -> None:
        """Upsert by name: a rule keeps its place (creation order) when it is changed."""
        self._db.execute(
            "INSERT INTO rules (name, source, created_at, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET source = excluded.source, "
            "updated_at = excluded.updated_at",
            (name, _dump(source), self.now, self.now),
        )

    def set_context(self, keys: Sequence[str], context: dict[str, Any] | None) -> None:
        for key in keys:
            self._db.execute(
                "INSERT INTO chat_state (chat_key, context, context_at) VALUES (?, ?, ?) "
                "ON CONFLICT (chat_key) DO UPDATE SET context = excluded.context, "
                "context_at = excluded.context_at",
                (key, None if context is None else _dump(context), self.now),
            )

    def set_plan(self, keys: Sequence[str], plan: Any) -> None:
        for key in keys:
            self._db.execute(
                "INSERT INTO chat_state (chat_key, plan, plan_at) VALUES (?, ?, ?) "
                "ON CONFLICT (chat_key) DO UPDATE SET plan = excluded.plan, "
                "plan_at = excluded.plan_at",
                (key, _dump(plan), self.now),
            )


class CommandQueries(Transactional):
    @contextmanager
    def command(self, command_id: str, now: float) -> Iterator[CommandTx | None]:
        """One transaction for a command: None when its id was seen before (do nothing).
        An exception inside rolls everything back, the seen mark included."""
        with self._tx() as db:
            if command_id:
                if not mark_seen(db, command_id, now):
                    yield None
                    return
                _write_meta(db, "last_command_id", command_id)
            yield CommandTx(db, now)

    def rules(self) -> list[dict[str, Any]]:
        """Every stored rule's source, oldest first."""
        with self._tx() as db:
            rows = db.execute("SELECT source FROM rules ORDER BY rowid").fetchall()
        return [json.loads(r[0]) for r in rows]

    def disable_rule(self, name: str, reason: str, now: float) -> bool:
        """Turn a rule off as if the backend had sent `enabled: false`, with an `error` event
        saying why. False when it was already off or is gone."""
        with self._tx() as db:
            row = db.execute("SELECT source FROM rules WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            source = json.loads(row[0])
            config = source.get("rule_config") or {}
            if config.get("enabled") is False:
                return False
            source["rule_config"] = {**config, "enabled": False}
            db.execute(
                "UPDATE rules SET source = ?, updated_at = ? WHERE name = ?",
                (_dump(source), now, name),
            )
            insert_event(
                db,
                "error",
                {"details": {"error": "rule_disabled", "rule": name, "reason": reason}},
                now,
            )
        return True

    def chat_states(self, keys: Sequence[str]) -> dict[str, ChatState]:
        """The stored context and plan of these chat keys (those that have any), by key."""
        if not keys:
            return {}
        with self._tx() as db:
            rows = db.execute(
                "SELECT chat_key, context, context_at, plan, plan_at FROM chat_state "
                f"WHERE chat_key IN ({','.join('?' * len(keys))})",
                list(keys),
            ).fetchall()
        return {
            key: ChatState(
                json.loads(context) if context is not None else None,
                context_at,
                json.loads(plan) if plan is not None else None,
                plan_at,
            )
            for key, context, context_at, plan, plan_at in rows
        }

    def prune_chat_state(self, now: float, *, max_bytes: int = CHAT_STATE_MAX_BYTES) -> int:
        """Forget contexts and plans set (or reset) before a cutoff: CHAT_STATE_MEMORY_SECONDS
        ago, or later when the newer ones alone pass `max_bytes`. Returns the rows deleted.

        Each field goes by its own time, and everything set at or before the cutoff goes: a
        chat known by two keys keeps "the latest setting wins" (a reset is never dropped while
        the older context it replaced is kept)."""
        cutoff = now - CHAT_STATE_MEMORY_SECONDS
        with self._tx() as db:
            kept = 0
            for at, size in db.execute(
                "SELECT MAX(COALESCE(context_at, 0), COALESCE(plan_at, 0)), "
                "LENGTH(CAST(chat_key AS BLOB)) + COALESCE(LENGTH(CAST(context AS BLOB)), 0) "
                "+ COALESCE(LENGTH(CAST(plan AS BLOB)), 0) FROM chat_state ORDER BY 1 DESC"
            ):
                kept += size
                if kept > max_bytes:
                    cutoff = max(cutoff, at)
                    break
            db.execute(
                "UPDATE chat_state SET context = NULL, context_at = NULL WHERE context_at <= ?",
                (cutoff,),
            )
            db.execute(
                "UPDATE chat_state SET plan = NULL, plan_at = NULL WHERE plan_at <= ?", (cutoff,)
            )
            return db.execute(
                "DELETE FROM chat_state WHERE context_at IS NULL AND plan_at IS NULL"
            ).rowcount

    def record_rule_hit(
        self,
        message_guid: str,
        action: str,
        rule: str,
        now: float,
        *,
        event: tuple[str, dict[str, Any]],
        outgoing: Sequence[NewOutgoing] = (),
    ) -> str:
        """Store a rule's effect on one message once; a second call (the same row read again
        after a crash) changes nothing and returns the action recorded the first time."""
        with self._tx() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO rule_hits (message_guid, action, rule, created_at) "
                "VALUES (?, ?, ?, ?)",
                (message_guid, action, rule, now),
            ).rowcount
            if not inserted:
                row = db.execute(
                    "SELECT action FROM rule_hits WHERE message_guid = ?", (message_guid,)
                ).fetchone()
                return str(row[0])
            ids = [insert_outgoing(db, item, now) for item in outgoing]
            insert_event(db, event[0], {**event[1], **({"message_ids": ids} if ids else {})}, now)
        return action

    def prune_rule_hits(self, now: float) -> int:
        with self._tx() as db:
            return db.execute(
                "DELETE FROM rule_hits WHERE created_at < ?", (now - RULE_HIT_MEMORY_SECONDS,)
            ).rowcount
