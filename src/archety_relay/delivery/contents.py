"""What a message's attachments hold that can be read only once macOS or the download is done:
Apple's transcript of a voice note, how long the recording is, the cards in a `.vcf`.

    settle(guid, body, enqueued_at, now)   before the message goes: Opened(body) to post, or
                                           Opened(wait=s): only this message's chat waits
    follow_up_step(now)                    voice notes that went without a transcript: looked
                                           at again for TRANSCRIPT_WATCH_SECONDS; one that
                                           appears is a `voice_transcribed` event

A voice note with no transcript yet waits up to ARCHETY_TRANSCRIPT_WAIT (10 s) after it was
captured, holding its own chat only (the lanes go on, as for a picture still downloading), then
goes with `text: ""` and `transcript: null`. A contact card waits for its file like a picture
(ARCHETY_ATTACHMENT_WAIT), then goes without `contact` if it never came. Nothing here changes
a body once it is frozen (pictures.upload freezes it the first time it is complete).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import structlog

from .. import phones
from ..chatdb import vcard, voice
from ..chatdb.reader import ChatDb
from ..chatdb.rows import AttachmentState
from ..config import Settings
from ..model import ChatEvent
from ..pictures import rules
from ..store import Store

log = structlog.get_logger("archety_relay.contents")

# A waiting message looks at chat.db this often (two lookups by the guid index).
WAIT_POLL_SECONDS = 1.0
# A voice note that went without its transcript is looked at for this long.
TRANSCRIPT_WATCH_SECONDS = 3600.0
TRANSCRIPT_MAX_INTERVAL = 60.0
# Files read whole at most this big: a CAF's header chunks may sit after its audio, and a card
# list shared as one .vcf stays small.
MAX_READ_BYTES = 4 * 1024 * 1024
_CARD_KINDS = ("contact", "location")


@dataclass(frozen=True)
class Opened:
    body: bytes
    wait: float | None = None  # seconds: the message waits (its chat is held)


def _needs_look(body: bytes) -> bool:
    """Cheap pre-check on the frozen body: only voice notes and cards are ever opened."""
    return (
        b'"kind":"voice"' in body
        or b'"kind":"contact"' in body
        or (b'"kind":"location"' in body and b'"attachments"' in body)
    )


class Contents:
    def __init__(self, settings: Settings, chatdb: ChatDb, store: Store) -> None:
        self.settings = settings
        self.chatdb = chatdb
        self.store = store
        self.region = phones.region_of(settings.persona_phone, settings.default_region)

    # -- before the message -----------------------------------------------------------------
    def settle(self, message_guid: str, body: bytes, enqueued_at: float, now: float) -> Opened:
        if not _needs_look(body) or self.store.settled_body(message_guid) is not None:
            return Opened(body)
        message = json.loads(body)
        entries = [e for e in message.get("attachments") or [] if isinstance(e, dict)]
        unheard = [e for e in entries if e.get("kind") == "voice" and not e.get("transcript")]
        if unheard:
            self._transcribe(message, unheard, self.chatdb.voice_transcripts(message_guid))
        files = [
            e
            for e in entries
            if (e.get("kind") == "voice" and e.get("duration_s") is None)
            or (e.get("kind") in _CARD_KINDS and not _has_card(e))
        ]
        states = self.chatdb.attachment_states([str(e.get("guid")) for e in files])
        roots = [os.path.realpath(self.settings.chat_db.parent / f) for f in rules.MESSAGES_FOLDERS]
        unread_cards = 0
        for entry in files:
            data = _read(states.get(str(entry.get("guid"))), roots)
            if entry.get("kind") == "voice":
                if data is not None:
                    entry["duration_s"] = voice.caf_duration(data)
            elif data is None:
                unread_cards += 1
            else:
                self._open_card(message, entry, data)
        still_unheard = [e for e in unheard if not e.get("transcript")]
        if still_unheard and now < enqueued_at + self.settings.transcript_wait:
            return Opened(
                body, min(WAIT_POLL_SECONDS, enqueued_at + self.settings.transcript_wait - now)
            )
        if unread_cards and now < enqueued_at + self.settings.attachment_wait:
            return Opened(
                body, min(WAIT_POLL_SECONDS, enqueued_at + self.settings.attachment_wait - now)
            )
        if unheard:
            log.info(
                "voice_transcript",
                message_guid=message_guid,
                found=not still_unheard,
                waited_s=round(max(0.0, now - enqueued_at), 1),
            )
        if still_unheard:
            self.store.watch_transcript(
                message_guid,
                str(message.get("chat_guid") or ""),
                now + TRANSCRIPT_WATCH_SECONDS,
                now,
            )
        return Opened(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode())

    def _transcribe(
        self,
        message: dict[str, Any],
        entries: list[dict[str, Any]],
        found: tuple[str | None, dict[str, str]],
    ) -> None:
        in_body, by_file = found
        for entry in entries:
            text = by_file.get(str(entry.get("guid"))) or in_body
            if text:
                entry.update(transcript=text, transcript_source="apple")
                if not message.get("text"):
                    message["text"] = text

    def _open_card(self, message: dict[str, Any], entry: dict[str, Any], data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        if entry.get("kind") == "location":
            place = vcard.location(text)
            entry["location"] = place
            if place is not None and message.get("kind") == "location":
                message.setdefault("location", place)
            return
        cards = vcard.contacts(text, self.region)
        entry["contact"] = cards[0] if cards else None
        if len(cards) > 1:
            entry["contacts"] = cards

    # -- after the message: late transcripts ------------------------------------------------
    def follow_up_step(self, now: float) -> tuple[int, float | None]:
        """Look for the transcripts of voice notes that went without one. Returns (events
        added, seconds until the next look or None when none is watched)."""
        events = 0
        for watch in self.store.due_transcripts(now):
            in_body, by_file = self.chatdb.voice_transcripts(watch.message_guid)
            text = in_body or next(iter(by_file.values()), None)
            if text:
                event = ChatEvent(
                    "voice_transcribed",
                    watch.message_guid,
                    watch.chat_guid or None,
                    watch.message_guid,
                    {"text": text},
                )
                self.store.transcript_found(watch.message_guid, event, now)
                log.info(
                    "voice_transcribed",
                    message_guid=watch.message_guid,
                    late_s=round(now - watch.since, 1),
                )
                events += 1
            elif now >= watch.until:
                self.store.forget_transcript(watch.message_guid)
                log.info("voice_never_transcribed", message_guid=watch.message_guid)
            else:
                interval = min(TRANSCRIPT_MAX_INTERVAL, 2.0 ** min(watch.attempts + 1, 10))
                self.store.transcript_looked(watch.message_guid, now + interval)
        next_at = self.store.next_transcript_at()
        return events, (None if next_at is None else max(0.0, next_at - now))


def _has_card(entry: dict[str, Any]) -> bool:
    return "contact" in entry or "location" in entry


def _read(state: AttachmentState | None, roots: list[str]) -> bytes | None:
    """The file's bytes once Messages finished it (see pictures.rules.readiness), else None;
    only from the folders where Messages keeps attachments, like a picture (`..` and symlinks
    resolved first, hard links refused: a filename in chat.db must not make the relay read
    any file of the Mac; see rules.confined)."""
    if state is None or not state.path:
        return None
    path = os.path.realpath(state.path)
    try:
        found = os.stat(path)
    except OSError:
        found = None
    if not rules.confined(path, roots, found.st_nlink if found else 1):
        log.warning("attachment_outside_messages_folders", attachment_guid=state.guid)
        return None
    if found is None:
        return None
    size = found.st_size
    if rules.readiness(state, size) != "ready" or size > MAX_READ_BYTES:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_READ_BYTES)
    except OSError:
        return None
