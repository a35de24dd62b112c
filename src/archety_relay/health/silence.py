"""Inbound silence: no incoming message for ARCHETY_SILENCE_ALERT raises `inbound_silence`, and
the next incoming message clears it.

A persona people write to every hour that hears nothing for six is the commonest sign that
iMessage stopped (Messages signed out, the Mac's Apple ID in trouble, chat.db no longer
written) while every health ping stays green. The newest incoming row is read from chat.db by
`message_idx_date`, so it survives restarts and costs one index step.
"""

from __future__ import annotations

import structlog

from ..chatdb.reader import ChatDb
from ..store import Store
from .checks import INBOUND_SILENCE

log = structlog.get_logger("archety_relay.silence")


def silent_since(last_inbound_at: float | None, watching_since: float) -> float:
    """When the silence began: the newest incoming message, or when the relay began watching
    if chat.db has none."""
    return last_inbound_at if last_inbound_at is not None else watching_since


def is_silent(since: float, threshold: float, now: float) -> bool:
    return threshold > 0 and now - since >= threshold


class Silence:
    def __init__(self, chatdb: ChatDb, store: Store, threshold: float, started_at: float) -> None:
        self.chatdb = chatdb
        self.store = store
        self.threshold = threshold
        self.started_at = started_at
        self.last_inbound_at: float | None = None

    def step(self, now: float) -> int:
        """Look once; returns how many alert events were stored."""
        self.last_inbound_at = self.chatdb.last_inbound_at()
        since = silent_since(self.last_inbound_at, self.started_at)
        if not is_silent(since, self.threshold, now):
            return int(self.store.clear_alert(INBOUND_SILENCE, now))
        if self.store.raise_alert(INBOUND_SILENCE, since, now, {"threshold_s": self.threshold}):
            log.warning("inbound_silence", silent_s=round(now - since), threshold_s=self.threshold)
            return 1
        return 0
