"""Alerts the relay has raised and not yet cleared, and the events that report them.

An alert is a fact kept in `meta` (key `alerts`, JSON {kind: {since, details}}) and an `alert`
event, written in one transaction: the event is stored exactly once per raise however often the
condition is seen, and `alert_cleared` once when it goes. The event ids come from the kind and
the time it began, so a crash between the two writes cannot report the same alert twice.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..model import ChatEvent, utc_iso
from .db import Transactional
from .watch import insert_chat_event

ALERTS_KEY = "alerts"


def _read(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (ALERTS_KEY,)).fetchone()
    try:
        value = json.loads(row[0]) if row and row[0] else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _write(db: sqlite3.Connection, alerts: dict[str, dict[str, Any]]) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
        "SET value = excluded.value",
        (ALERTS_KEY, json.dumps(alerts, sort_keys=True)),
    )


class AlertQueries(Transactional):
    def active_alerts(self) -> dict[str, dict[str, Any]]:
        """{kind: {"since": unix time, "details": {...}}} of every alert still raised."""
        with self._tx() as db:
            return _read(db)

    def raise_alert(
        self, kind: str, since: float, now: float, details: dict[str, Any] | None = None
    ) -> bool:
        """Raise `kind` unless it is already up; True when this call raised it (and stored its
        `alert` event)."""
        with self._tx() as db:
            alerts = _read(db)
            if kind in alerts:
                return False
            alerts[kind] = {"since": since, "details": details or {}}
            _write(db, alerts)
            event = ChatEvent(
                "alert",
                f"{kind}-{int(since)}",
                None,
                None,
                {"kind": kind, "since": utc_iso(since), **(details or {})},
            )
            insert_chat_event(db, event, now)
            return True

    def clear_alert(self, kind: str, now: float) -> bool:
        """Clear `kind` if it is up; True when this call cleared it (and stored `alert_cleared`)."""
        with self._tx() as db:
            alerts = _read(db)
            raised = alerts.pop(kind, None)
            if raised is None:
                return False
            _write(db, alerts)
            since = raised.get("since") if isinstance(raised, dict) else None
            key = f"{kind}-{int(since) if isinstance(since, (int, float)) else 0}"
            insert_chat_event(db, ChatEvent("alert_cleared", key, None, None, {"kind": kind}), now)
            return True

    def events_pending(self) -> int:
        """Events stored and not yet acknowledged by the backend."""
        with self._tx() as db:
            return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
