"""What a newly inserted row means beyond "a message": capture asks, this answers.

- a reaction, a group change, or a message the persona's account sent from another device
  → a conversation event (stored with the cursor move, see capture);
- a message → possibly skipped (`backfill`: iCloud restoring history, see lateness;
  `url_preview`: the second row Messages writes for a link it already wrote as text), or
  forwarded with more fields: `delayed_s` (it arrived late), `reply_to` (an inline reply).

The decisions are events/lateness (pure); this module gathers the few facts they need from
chat.db and the state database, only for the rare rows that need them.
"""

from __future__ import annotations

from typing import Any

import structlog

from ..chatdb import rows
from ..chatdb.reader import ChatDb
from ..model import ChatEvent, Message, Skipped
from ..store import Store
from . import events, lateness

log = structlog.get_logger("archety_relay.arrivals")

# An outgoing row matching a send of the relay's this recent is the relay's own echo.
OWN_SEND_MEMORY_SECONDS = 600.0
# Messages writes a link's preview row within seconds of the text row that holds the URL.
URL_PREVIEW_SECONDS = 10.0


class Arrivals:
    def __init__(self, chatdb: ChatDb, store: Store, max_age: float) -> None:
        self.chatdb = chatdb
        self.store = store
        self.max_age = max_age
        # Old rows by ROWID → when first seen: how many arrive together (a re-read is no bunch).
        self._old_seen: dict[int, float] = {}

    # -- rows that are events ---------------------------------------------------------------
    def event_for(self, raw: rows.RawMessage, now: float) -> ChatEvent | None:
        """The event a row that is not forwarded stands for, or None (also for history that
        iCloud restores: old reactions and own messages are not news either)."""
        sent_at = rows.unix_seconds(raw.date)
        if sent_at is not None:
            age = now - sent_at
            arrival = lateness.Arrival(age, len(self._old_seen), False, False)
            if age > self.max_age or lateness.verdict(arrival) == "backfill":
                return None
        kind = events.message_kind(raw)
        if kind == "poll_vote":  # the option's text is in the poll's row
            poll, _ = events.target_of(raw.associated_message_guid)
            return events.poll_vote_event(raw, self.chatdb.read_guid(poll) if poll else None)
        if kind in events.ROW_EVENT_KINDS:
            return events.new_row_event(raw)
        # An empty own row, or one in no chat, is Messages' trace of a failed send, not a send.
        if (
            kind == "message"
            and raw.is_from_me
            and raw.guid
            and raw.chats
            and not rows.is_empty(raw)
        ):
            text = rows.message_text(raw)
            chat_guid = events.chat_guid_of(raw)
            if self.store.is_own_send(chat_guid, text, now - OWN_SEND_MEMORY_SECONDS):
                return None
            return events.sent_elsewhere_event(raw)
        return None

    # -- rows that are messages -------------------------------------------------------------
    def note_batch(self, batch: list[rows.RawMessage], now: float) -> None:
        """Remember which rows of a read are old: they count towards a bunch."""
        for raw in batch:
            if _is_old(raw, now):
                self._old_seen.setdefault(raw.rowid, now)
        horizon = now - lateness.BUNCH_WINDOW_SECONDS
        self._old_seen = {r: t for r, t in self._old_seen.items() if t >= horizon}

    def gathering(self, raw: rows.RawMessage, now: float) -> bool:
        """True while an old row waits (`lateness.BUNCH_WAIT_SECONDS` from first sight) for the
        rest of a bunch: iCloud may commit a back-fill a row at a time, and judged at once
        the first rows of a bunch would each look alone."""
        first_seen = self._old_seen.get(raw.rowid)
        sent_at = rows.unix_seconds(raw.date)
        # Younger rows are never judged by the bunch: nothing to wait for.
        if first_seen is None or sent_at is None:
            return False
        if now - sent_at < lateness.BUNCH_MIN_AGE_SECONDS:
            return False
        return 0 <= now - first_seen < lateness.BUNCH_WAIT_SECONDS

    def judge(self, raw: rows.RawMessage, message: Message, now: float) -> Skipped | dict[str, Any]:
        """Skip the message with a reason, or the fields it carries beyond chat.db's row."""
        if raw.balloon_bundle_id == events.URL_BALLOON and self._text_had_url(raw, message):
            return Skipped(raw.rowid, raw.guid, "url_preview")
        extra: dict[str, Any] = {}
        age = now - message.timestamp
        if age >= lateness.LATE_AFTER_SECONDS:
            chat = min(raw.chats, key=lambda c: c.rowid) if raw.chats else None
            ahead = (
                self.chatdb.chat_ahead(chat.rowid, raw.date, raw.rowid, message.text)
                if chat and chat.rowid >= 0 and raw.date
                else None
            )
            arrival = lateness.Arrival(
                age_s=age,
                together=len(self._old_seen) or 1,
                chat_had_newer=bool(ahead and ahead.newer_incoming),
                is_read=bool(raw.is_read),
                twin=bool(ahead and ahead.twin),
            )
            decided = lateness.verdict(arrival)
            log.info(
                "late_row",
                rowid=raw.rowid,
                guid=raw.guid,
                age_s=round(age),
                together=arrival.together,
                chat_had_newer=arrival.chat_had_newer,
                is_read=arrival.is_read,
                twin=arrival.twin,
                verdict=decided,
            )
            if decided == "backfill":
                return Skipped(raw.rowid, raw.guid, "backfill")
            if decided == "late":
                extra["delayed_s"] = int(age)
        reply = events.reply_to(raw)
        if reply is not None:
            original = self.chatdb.read_guid(reply["message_guid"])
            reply["text"] = rows.message_text(original) if original else None
            reply["sender"] = original.sender if original and not original.is_from_me else None
            if original is not None and original.is_from_me:
                reply["from_me"] = True
            extra["reply_to"] = reply
        return extra

    def _text_had_url(self, raw: rows.RawMessage, message: Message) -> bool:
        url = message.text.strip()
        chat = min(raw.chats, key=lambda c: c.rowid) if raw.chats else None
        if not url or chat is None or chat.rowid < 0 or not raw.date:
            return False
        since = raw.date - int(URL_PREVIEW_SECONDS * 1e9)
        return any(url in text for text in self.chatdb.texts_before(chat.rowid, since, raw.rowid))


def _is_old(raw: rows.RawMessage, now: float) -> bool:
    """Dated long before it arrived (a message, a reaction, an own row: iCloud restores all)."""
    sent_at = rows.unix_seconds(raw.date)
    return sent_at is not None and now - sent_at >= lateness.LATE_AFTER_SECONDS
