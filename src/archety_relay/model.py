"""The values the relay passes around: what a chat.db row becomes, and why a row was skipped."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# Lone surrogates are valid in JSON ("\ud83d") but cannot be encoded as UTF-8 (SQLite, argv).
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Text from the backend made safe to store and send: a lone surrogate becomes U+FFFD and
    NUL is dropped (it cannot travel in argv). Anything the backend sends can then be stored."""
    return _SURROGATES.sub("\ufffd", value).replace("\x00", "")


MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class FileToSend:
    """A file the persona sends (issue #19): where to fetch it, and what the backend named it."""

    url: str
    filename: str | None = None
    mime_type: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"url": self.url, "filename": self.filename, "mime_type": self.mime_type},
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> FileToSend:
        data = json.loads(text)
        return cls(data["url"], data.get("filename"), data.get("mime_type"))


def clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON value from the backend with every string cleaned (`clean_text`), keys included.
    Raises ValueError beyond MAX_JSON_DEPTH levels, or for a number that is not finite."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v, depth + 1) for v in value]
    if isinstance(value, float) and value - value != 0:  # inf and nan are not JSON
        raise ValueError("a number that is not finite")
    return value


def utc_iso(ts: float) -> str:
    """Unix time as the ISO 8601 UTC string used on the wire and in `status`."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Attachment:
    guid: str
    path: str | None
    mime_type: str | None
    transfer_name: str | None
    total_bytes: int | None
    uti: str | None
    # picture | sticker | voice | audio | video | contact | location | file (chatdb.kinds)
    kind: str | None = None
    is_sticker: bool = False
    # attachment.user_info as read (a voice note's transcript may be in it); never sent.
    user_info: bytes | None = field(default=None, repr=False, compare=False)
    # What was read about the file beyond its row (a transcript, a contact card), as sent.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "guid": self.guid,
            "path": self.path,
            "mime_type": self.mime_type,
            "transfer_name": self.transfer_name,
            "total_bytes": self.total_bytes,
            "uti": self.uti,
        }
        if self.kind is not None:
            out["kind"] = self.kind
        if self.is_sticker:
            out["is_sticker"] = True
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Message:
    """An incoming iMessage, ready for `POST /orchestrator/message`."""

    rowid: int
    message_guid: str
    chat_guid: str
    mode: str  # "direct" | "group"
    sender: str
    text: str
    timestamp: int  # Unix seconds
    participants: tuple[str, ...]
    attachments: tuple[Attachment, ...] = field(default=())
    # The previous edge client keyed chats by chat.chat_identifier; sending it too lets the
    # backend join its old and new conversation keys.
    chat_identifier: str | None = None
    service: str = "iMessage"  # message.service: iMessage, SMS, RCS
    is_first_message: bool = False  # no earlier message of this chat in chat.db
    # An inline reply's original {message_guid, part, text, sender} (see events.reply_to).
    reply_to: Mapping[str, Any] | None = None
    delayed_s: int | None = None  # arrived this late (see lateness): the backend may not answer
    # What was sent (chatdb.kinds): text, picture, voice, contact, poll, app ...
    kind: str = "text"
    # Fields only some kinds carry, at the top of the body (`poll`, `location`).
    fields: Mapping[str, Any] = field(default_factory=dict)
    # Added to `metadata` (`effect`, `app`, `app_name`).
    meta: Mapping[str, Any] = field(default_factory=dict)
    # The names the Mac's owner gave the sender and the group's members (Contacts).
    sender_name: str | None = None
    participant_names: Mapping[str, str] | None = None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "chat_guid": self.chat_guid,
            "mode": self.mode,
            "sender": self.sender,
            "text": self.text,
            "timestamp": self.timestamp,
            "participants": list(self.participants),
            "message_guid": self.message_guid,
            "chat_identifier": self.chat_identifier or self.sender,
            "service": self.service,
            "kind": self.kind,
            "metadata": {
                "has_attachment": bool(self.attachments),
                "is_first_message": self.is_first_message,
                **self.meta,
            },
        }
        body.update(self.fields)
        if self.sender_name is not None:
            body["sender_name"] = self.sender_name
        if self.participant_names:
            body["participant_names"] = dict(self.participant_names)
        if self.attachments:
            body["attachments"] = [a.to_json() for a in self.attachments]
        if self.reply_to is not None:
            body["reply_to"] = dict(self.reply_to)
        if self.delayed_s is not None:
            body["delayed_s"] = self.delayed_s
        return body

    def frozen_body(self, extra: Mapping[str, Any] | None = None) -> bytes:
        """The exact bytes every delivery attempt of this message sends; `extra` adds fields
        known outside chat.db (persona, the chat's context) and replaces keys it names."""
        body = {**self.payload(), **(extra or {})}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Skipped:
    """A row that is not forwarded, and why (a fixed snake_case reason for logs and summaries)."""

    rowid: int
    guid: str | None
    reason: str


@dataclass(frozen=True)
class ChatEvent:
    """One conversation event for `/edge/sync` `events`; `key` makes its id deterministic, so
    the same change seen twice (a crash between reading and storing) is stored once."""

    event_type: str
    key: str
    chat_guid: str | None
    message_guid: str | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        return f"evt-{self.event_type}-{self.key}"

    def payload(self) -> dict[str, Any]:
        return {
            "chat_guid": self.chat_guid,
            "message_guid": self.message_guid,
            "details": self.details,
        }


@dataclass(frozen=True)
class Fingerprint:
    """What is compared between two looks at a recent row (all cheap, unindexed-safe columns)."""

    guid: str
    rowid: int
    date: int  # Apple date of the message (what the window is keyed on)
    from_me: bool
    date_edited: int
    unsent: tuple[int, ...]
    is_empty: bool
    read_at: int  # Apple date_read of a persona message (0: unread)
