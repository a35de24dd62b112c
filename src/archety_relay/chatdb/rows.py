"""A chat.db row, as read, becomes a `Message` to forward or a `Skipped` with its reason.

Pure functions over values: `chatdb` does the reading, this decides. Every column may be NULL
(older macOS versions, rows mid-write, damaged databases): a missing value is read as the
harmless default, and a row that cannot be forwarded is skipped with a reason, never an exception.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..model import Attachment, Message, Skipped
from . import kinds, typedstream

# Apple's epoch (2001-01-01T00:00:00Z) in Unix seconds.
APPLE_EPOCH = 978_307_200
# Above this, `message.date` is in nanoseconds (macOS 10.13 and later); below it, in seconds.
_NANOSECOND_DATES = 10**14
GROUP_CHAT_STYLE = 43
DIRECT_CHAT_STYLE = 45
# Messages.app's placeholder for where an attachment sits inside the text.
ATTACHMENT_PLACEHOLDER = "\ufffc"


@dataclass(frozen=True)
class AttachmentState:
    """The columns of one chat.db `attachment` row that say whether its file is there."""

    guid: str
    path: str | None  # filename, `~` expanded
    transfer_state: int | None
    ck_sync_state: int | None
    total_bytes: int | None


@dataclass(frozen=True)
class ChatRef:
    rowid: int
    guid: str | None
    style: int | None
    identifier: str | None
    participants: tuple[str, ...]
    first_message_id: int | None = None  # the chat's lowest message ROWID (an index seek)


@dataclass(frozen=True)
class RawMessage:
    """The columns of one `message` row and what joins to it, exactly as chat.db holds them."""

    rowid: int
    guid: str | None
    text: str | None
    attributed_body: bytes | None
    sender: str | None  # handle.id
    service: str | None
    is_from_me: int | None
    item_type: int | None
    associated_message_type: int | None
    date: int | None
    chats: tuple[ChatRef, ...] = field(default=())
    attachments: tuple[Attachment, ...] = field(default=())
    # What reactions, replies, group changes and late arrivals are told apart by (see events).
    associated_message_guid: str | None = None
    associated_message_emoji: str | None = None
    group_action_type: int | None = None
    other_handle: str | None = None  # handle.id of message.other_handle
    group_title: str | None = None
    thread_originator_guid: str | None = None
    thread_originator_part: str | None = None
    balloon_bundle_id: str | None = None
    is_read: int | None = None
    # The columns the change watch compares, as read with the row (None: a row it never
    # watches): capture stores their fingerprint with the message, see capture.changes.
    watch: WatchedRow | None = None
    # What kind of thing was sent (see kinds): a voice note, an effect, an app's payload.
    is_audio_message: int | None = None
    expressive_send_style_id: str | None = None
    payload_data: bytes | None = field(default=None, repr=False)  # app balloons and poll votes
    share_status: int | None = None  # item_type 4: 0 location sharing started, 1 stopped
    share_direction: int | None = None


class WatchedRow(NamedTuple):
    """The columns of a recent row that an edit, unsend or read receipt changes (see events)."""

    rowid: int
    guid: str
    date: int | None
    is_from_me: int | None
    date_edited: int | None
    is_empty: int | None
    message_summary_info: bytes | None
    is_read: int | None
    date_read: int | None


def unix_seconds(apple_date: int | None) -> int | None:
    """`message.date` (nanoseconds, or seconds on old macOS, since 2001) as Unix seconds."""
    if apple_date is None or apple_date <= 0:
        return None
    seconds = apple_date / 1e9 if apple_date > _NANOSECOND_DATES else float(apple_date)
    return int(seconds + APPLE_EPOCH)


def unix_time(apple_date: int | None) -> float | None:
    """`message.date` as precise Unix time (for how long capture took), or None."""
    if apple_date is None or apple_date <= 0:
        return None
    seconds = apple_date / 1e9 if apple_date > _NANOSECOND_DATES else float(apple_date)
    return seconds + APPLE_EPOCH


def apple_date(unix_time: float) -> int:
    """Unix time as Messages.app stores it in `message.date` (nanoseconds since 2001)."""
    return int((unix_time - APPLE_EPOCH) * 1e9)


def message_text(row: RawMessage) -> str:
    """The text a person typed: `text`, else the attributedBody blob, without placeholders."""
    text = row.text if row.text else typedstream.decode(row.attributed_body)
    return (text or "").replace(ATTACHMENT_PLACEHOLDER, "").strip()


def is_group(chat: ChatRef) -> bool:
    return chat.style == GROUP_CHAT_STYLE or (chat.guid is not None and ";+;" in chat.guid)


def is_empty(row: RawMessage) -> bool:
    """Nothing to forward yet: Messages may fill text or join attachments a moment later. An
    app's balloon (a poll, handwriting, a payment) is something even without text."""
    return not message_text(row) and not row.attachments and not kinds.is_app_row(row)


def chat_for_orphan(row: RawMessage, found: Sequence[ChatRef], any_form: bool) -> ChatRef | None:
    """The chat of a row whose chat join never came, chosen among the chats its sender is in.

    A chat is never invented where Messages has a real one: a direct chat with the sender is used
    as Messages wrote it (on macOS 26 `any;-;<handle>`, where a made-up `RCS;-;<handle>` would
    split the conversation). A sender known only from group chats gets None: the row cannot be
    placed, and answering it in a direct chat would take a group's message private. A sender in
    no chat at all gets the direct guid this database's Messages would write.
    """
    sender = row.sender or ""
    direct = [
        c
        for c in found
        if c.guid and not is_group(c) and (c.identifier == sender or c.participants == (sender,))
    ]
    if direct:
        service = f"{row.service or 'iMessage'};"
        return min(direct, key=lambda c: (not (c.guid or "").startswith(service), c.rowid))
    if any(is_group(c) for c in found):
        return None
    prefix = "any" if any_form else (row.service or "iMessage")
    # No chat to look back in (first_message_id 0): the message is not claimed to be the first.
    return ChatRef(-1, f"{prefix};-;{sender}", DIRECT_CHAT_STYLE, sender, (sender,), 0)


# associated_message_type values of ordinary messages: 2 and 3 carry app payloads, not reactions.
ORDINARY_ASSOCIATED_TYPES = frozenset({0, 2, 3})


def associated_kind(associated_type: int | None) -> str | None:
    """None for an ordinary message; else what the row is about another message.

    Every value is classified on purpose: a strict `= 0` test drops types 2 and 3, and a
    2000–3006 range leaks 2007 (sticker tapback), 3007, 1000 (a sticker placed on a message)
    and 4000 (a poll vote) as messages.
    """
    value = associated_type or 0
    if value in ORDINARY_ASSOCIATED_TYPES:
        return None
    if 2000 <= value <= 2007 or 3000 <= value <= 3007:
        return "reaction"
    if value == 1000:
        return "sticker_placed"
    if value == 4000:
        return "poll_vote"
    return "associated_message"


def skip_reason(row: RawMessage, now: float, max_age: float) -> str | None:
    """Why this row is not a new incoming message for the persona, or None when it is."""
    if row.guid is None:
        return "no_guid"
    if row.is_from_me:
        return "from_me"
    if row.item_type:
        return "not_ordinary_item"
    associated = associated_kind(row.associated_message_type)
    if associated is not None:
        return associated
    sent_at = unix_seconds(row.date)
    if sent_at is not None and now - sent_at > max_age:
        return "too_old"
    return None


def to_message(row: RawMessage, now: float, max_age: float) -> Message | Skipped:
    """Forward or skip one row. A row with no chat join is the caller's to hold (see relay)."""
    reason = skip_reason(row, now, max_age)
    if reason is not None:
        return Skipped(row.rowid, row.guid, reason)
    assert row.guid is not None
    if is_empty(row):
        return Skipped(row.rowid, row.guid, "empty")
    content = kinds.describe(row, message_text(row))

    # A message joined to several chats goes out once, to the oldest of them.
    chat = min(row.chats, key=lambda c: c.rowid) if row.chats else None
    sender = row.sender or (chat.identifier if chat and not is_group(chat) else None)
    if not sender:
        return Skipped(row.rowid, row.guid, "no_sender")

    if chat is not None and chat.guid:
        chat_guid = chat.guid
        mode = "group" if is_group(chat) else "direct"
        participants = chat.participants or (sender,)
        chat_identifier = chat.identifier or sender
        first = chat.first_message_id is None or chat.first_message_id >= row.rowid
    else:
        # No chat join even after waiting: a direct chat's guid is derivable from the sender.
        chat_guid = f"{row.service or 'iMessage'};-;{sender}"
        mode = "direct"
        participants = (sender,)
        chat_identifier, first = sender, False  # no chat to look back in

    return Message(
        rowid=row.rowid,
        message_guid=row.guid,
        chat_guid=chat_guid,
        mode=mode,
        sender=sender,
        text=content.text,
        timestamp=unix_seconds(row.date) or int(now),
        participants=participants,
        attachments=content.attachments,
        chat_identifier=chat_identifier,
        service=row.service or "iMessage",
        is_first_message=first,
        kind=content.kind,
        fields=content.fields,
        meta=content.meta,
    )


def attachment(
    guid: str,
    filename: str | None,
    mime_type: str | None,
    transfer_name: str | None,
    total_bytes: int | None,
    uti: str | None,
    is_sticker: int | None = None,
    user_info: bytes | None = None,
) -> Attachment:
    """An attachment row, its path with `~` expanded for the user the relay runs as."""
    path = os.path.expanduser(filename) if filename else None
    return Attachment(
        guid,
        path,
        mime_type,
        transfer_name,
        total_bytes,
        uti,
        is_sticker=bool(is_sticker),
        user_info=user_info,
    )
