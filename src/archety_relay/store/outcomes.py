"""What became of the persona's sent messages: the state last seen for each, for a day.

One row per watched sent message (`sent_outcomes`): pending, delivered or failed, with the
error code. A state and the event its change produced are stored in one transaction, so a
crash either loses both (found again on the next look) or keeps both (never reported twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..model import ChatEvent
from .db import Transactional
from .watch import insert_chat_event

SINCE_KEY = "outcomes_since"


class OutcomeQueries(Transactional):
    def outcomes_since(self, now_apple_date: int) -> int:
        """The Apple date the watch first ran (set now when it never did): rows older than it
        are history, recorded without an event."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (SINCE_KEY,)).fetchone()
            if row and str(row[0]).lstrip("-").isdigit():
                return int(row[0])
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (SINCE_KEY, str(now_apple_date)),
            )
            return now_apple_date

    def sent_states(self, since_date: int) -> dict[str, str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT guid, state FROM sent_outcomes WHERE date >= ?", (since_date,)
            ).fetchall()
        return {guid: state for guid, state in rows}

    def record_outcomes(
        self,
        states: Iterable[tuple[str, int, int, str, int]],
        events: Sequence[ChatEvent],
        now: float,
    ) -> int:
        """Store (guid, rowid, date, state, error) rows and their events together; returns how
        many events were new."""
        with self._tx() as db:
            for guid, rowid, date, state, error in states:
                db.execute(
                    "INSERT INTO sent_outcomes (guid, rowid, date, state, error, changed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (guid) DO UPDATE SET "
                    "rowid = excluded.rowid, date = excluded.date, state = excluded.state, "
                    "error = excluded.error, changed_at = excluded.changed_at",
                    (guid, rowid, date, state, error, now),
                )
            return sum(insert_chat_event(db, e, now) for e in events)

    def prune_outcomes(self, before_date: int) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM sent_outcomes WHERE date < ?", (before_date,)).rowcount

    def outcome_summary(self, since_date: int) -> dict[str, Any]:
        """For `status`: the persona's messages of the last day by state, failures by code."""
        with self._tx() as db:
            states = dict(
                db.execute(
                    "SELECT state, COUNT(*) FROM sent_outcomes WHERE date >= ? GROUP BY state",
                    (since_date,),
                ).fetchall()
            )
            errors = db.execute(
                "SELECT error, COUNT(*) FROM sent_outcomes WHERE date >= ? AND state = 'failed' "
                "GROUP BY error ORDER BY 2 DESC",
                (since_date,),
            ).fetchall()
        return {
            "delivered": int(states.get("delivered", 0)),
            "pending": int(states.get("pending", 0)),
            "not_delivered": int(states.get("failed", 0)),
            "errors": {str(code): int(n) for code, n in errors},
        }
