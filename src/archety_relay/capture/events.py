"""Conversation events: what a chat.db row, or a change to one, means for the persona.

Pure functions over values (`chatdb` reads, `capture`/`changes` store). Two kinds of input:

- a **new row** that is not an ordinary message: a reaction (`associated_message_type`
  2000–2007 added, 3000–3007 removed, 1000 an old-style sticker placed on a message), a group
  change (`item_type` 1–3 with `group_action_type`), or an `is_from_me` row the relay did not
  send (someone used the persona's Apple ID elsewhere) → one `ChatEvent`;
- an incoming **message the relay passes without posting** (history restored, too old, empty,
  unplaceable) → one `message_skipped`, so nothing a person sent disappears without the
  backend hearing of it; beyond a few dozen in one capture step, one summary event for the
  rest (a restored history must not flood the event queue);
- a **changed row** in the recent window: its `Fingerprint` (date_edited, unsent parts,
  is_empty, date_read) compared with the one stored last time → edited / unsent / read.

Why these signals (see ../shared/notes/chatdb-events.md, per macOS version): an unsend is
recorded as an edit (`date_edited` stamped, `message_summary_info.rp` lists the withdrawn
parts, on macOS 26 the body is cleared and `is_empty = 1`); `date_retracted` stays 0 and is
ignored. After an edit `text` may be NULL: the current text is in `attributedBody`.
"""

from __future__ import annotations

from typing import Any

from ..chatdb import balloons, rows, typedstream
from ..chatdb.plists import plist_dict
from ..chatdb.rows import RawMessage, WatchedRow
from ..model import ChatEvent, Fingerprint, clean_text, utc_iso

REACTION_KINDS = {
    0: "love",
    1: "like",
    2: "dislike",
    3: "laugh",
    4: "emphasize",
    5: "question",
    6: "emoji",
    7: "sticker",
}
LEGACY_STICKER = 1000
# (item_type, group_action_type) → event type; item_type 2 is a rename whatever the action.
_GROUP_ACTIONS = {
    (1, 0): "participant_added",
    (1, 1): "participant_removed",
    (3, 0): "participant_left",
    (3, 1): "group_photo_changed",
    (3, 2): "group_photo_changed",
}
URL_BALLOON = "com.apple.messages.URLBalloonProvider"
# Why an incoming message is passed without being posted, reported as `message_skipped`.
# Not `filtered` (a rule's own `message_filtered` says so) nor `url_preview` (the link's text
# went out with its own row).
SKIP_REPORTED = frozenset(
    {"backfill", "too_old", "empty", "no_sender", "unreadable", "group_chat_join_missing"}
)
# The text a `message_skipped` carries at most (a skipped row may hold megabytes).
SKIPPED_TEXT_CHARS = 4000


def _iso(apple_date: int) -> str | None:
    seconds = rows.unix_seconds(apple_date)
    try:
        return utc_iso(seconds) if seconds is not None else None
    except (ValueError, OverflowError, OSError):  # a date past year 9999 is no date
        return None


def chat_guid_of(row: RawMessage) -> str | None:
    """The chat a row belongs to: its oldest joined chat, else the sender's direct chat."""
    chat = min(row.chats, key=lambda c: c.rowid) if row.chats else None
    if chat is not None and chat.guid:
        return chat.guid
    if row.sender:
        return f"{row.service or 'iMessage'};-;{row.sender}"
    return None


# item_type → what the row is (imessage-exporter `Message::variant`, `is_shareplay`; its txt
# exporter's "Started/Stopped sharing location" tests): 4 a location share started or stopped
# (`share_status` 0/1), 6 FaceTime / SharePlay. Not checked on a real Mac here.
_ITEM_KINDS = {
    1: "group_event",
    2: "group_event",
    3: "group_event",
    4: "location_share",
    6: "shareplay",
}
# New rows that stand for a conversation event (new_row_event), not a message.
ROW_EVENT_KINDS = frozenset({"reaction", "group_event", "location_share", "shareplay", "poll_vote"})


def message_kind(row: RawMessage) -> str:
    """What a new row is: `message`, `reaction`, `group_event`, `location_share`, `shareplay`,
    `poll_vote`, or a reason it is none of them."""
    associated = rows.associated_kind(row.associated_message_type)
    if associated is None:
        if row.item_type in _ITEM_KINDS:
            return _ITEM_KINDS[row.item_type]
        return "not_ordinary_item" if row.item_type else "message"
    return "reaction" if associated in ("reaction", "sticker_placed") else associated


def wants_chat(row: RawMessage) -> bool:
    """Whether this row's meaning depends on its chat join (worth waiting for, like a message's):
    reactions, group changes, shares, votes and the persona's own messages become events about
    a chat."""
    kind = message_kind(row)
    return kind in ROW_EVENT_KINDS or (kind == "message" and bool(row.is_from_me))


def target_of(associated_guid: str | None) -> tuple[str | None, int | None]:
    """`p:<part>/<GUID>` → (GUID, part); `bp:<GUID>` → (GUID, 0); a bare GUID → (GUID, None)."""
    if not associated_guid:
        return None, None
    if associated_guid.startswith("p:") and "/" in associated_guid:
        part, _, guid = associated_guid[2:].partition("/")
        return guid or None, int(part) if part.isdigit() else None
    if associated_guid.startswith("bp:"):
        return associated_guid[3:] or None, 0
    return associated_guid, None


def reaction_event(row: RawMessage) -> ChatEvent | None:
    assoc = row.associated_message_type or 0
    if row.guid is None:
        return None
    removed = 3000 <= assoc <= 3007
    kind = "sticker" if assoc == LEGACY_STICKER else REACTION_KINDS[assoc % 1000]
    target, part = target_of(row.associated_message_guid)
    details: dict[str, Any] = {
        "kind": kind,
        "emoji": row.associated_message_emoji if kind == "emoji" else None,
        "sender": None if row.is_from_me else row.sender,
        "reaction_guid": row.guid,
        "part": part,
    }
    if row.is_from_me:
        details["from_me"] = True
    return ChatEvent(
        "reaction_removed" if removed else "reaction_added",
        row.guid,
        chat_guid_of(row),
        target,
        details,
    )


def group_event(row: RawMessage) -> ChatEvent | None:
    if row.guid is None:
        return None
    by = None if row.is_from_me else row.sender
    if row.item_type == 2:
        return ChatEvent(
            "group_renamed",
            row.guid,
            chat_guid_of(row),
            row.guid,
            {"name": row.group_title, "by": by},
        )
    event_type = _GROUP_ACTIONS.get((row.item_type or 0, row.group_action_type or 0))
    if event_type is None:
        return None
    details: dict[str, Any] = {"by": by}
    if event_type == "group_photo_changed":
        details["removed"] = row.group_action_type == 2
    elif event_type == "participant_left":
        details["handle"] = by
    else:
        details["handle"] = row.other_handle
    return ChatEvent(event_type, row.guid, chat_guid_of(row), row.guid, details)


def sent_elsewhere_event(row: RawMessage) -> ChatEvent | None:
    """An `is_from_me` message the relay did not send: the persona's account on another device."""
    if row.guid is None:
        return None
    details: dict[str, Any] = {"text": rows.message_text(row), "message_guid": row.guid}
    if row.attachments:
        details["attachments"] = [a.to_json() for a in row.attachments]
    return ChatEvent("message_sent_elsewhere", row.guid, chat_guid_of(row), row.guid, details)


def location_share_event(row: RawMessage) -> ChatEvent | None:
    """`location_shared` / `location_stopped` (item_type 4, `share_status` 0 / 1)."""
    if row.guid is None:
        return None
    details: dict[str, Any] = {
        "sender": None if row.is_from_me else row.sender,
        "handle": row.other_handle,
        "direction": row.share_direction,
    }
    if row.is_from_me:
        details["from_me"] = True
    event_type = "location_stopped" if row.share_status else "location_shared"
    return ChatEvent(event_type, row.guid, chat_guid_of(row), row.guid, details)


def shareplay_event(row: RawMessage) -> ChatEvent | None:
    """A FaceTime or SharePlay row (item_type 6): someone started a call or a shared activity."""
    if row.guid is None:
        return None
    details: dict[str, Any] = {"sender": None if row.is_from_me else row.sender}
    if row.is_from_me:
        details["from_me"] = True
    return ChatEvent("shareplay", row.guid, chat_guid_of(row), row.guid, details)


def poll_vote_event(row: RawMessage, poll: RawMessage | None) -> ChatEvent | None:
    """`poll_voted` {poll_message_guid, option, sender}: a vote row (associated type 4000) names
    its poll; the option's text comes from the poll's own payload when it can be read (else its
    identifier). A changed vote is a new row: the last one stands."""
    if row.guid is None:
        return None
    target, _part = target_of(row.associated_message_guid)
    found = balloons.poll(poll.payload_data) if poll is not None else None
    texts = found["option_ids"] if found else {}
    votes = balloons.poll_votes(row.payload_data)
    options = [texts.get(v["option_id"] or "", v["option_id"]) for v in votes]
    voter = next((v["participant"] for v in votes if v["participant"]), None)
    details: dict[str, Any] = {
        "poll_message_guid": target,
        "option": options[0] if options else None,
        "options": options,
        "sender": None if row.is_from_me else (row.sender or voter),
        "question": found["question"] if found else None,
    }
    if row.is_from_me:
        details["from_me"] = True
    return ChatEvent("poll_voted", row.guid, chat_guid_of(row), target, details)


def new_row_event(row: RawMessage) -> ChatEvent | None:
    """The event a newly inserted row stands for, or None (an ordinary message, or nothing).
    A poll vote needs its poll (see poll_vote_event), which only the caller can read."""
    kind = message_kind(row)
    if kind == "reaction":
        return reaction_event(row)
    if kind == "group_event":
        return group_event(row)
    if kind == "location_share":
        return location_share_event(row)
    if kind == "shareplay":
        return shareplay_event(row)
    return None


def reports_skip(row: RawMessage, reason: str) -> bool:
    """Whether passing this row for this reason is a `message_skipped` for the backend: a
    person's message, not a reaction, group change or the persona's own row."""
    return (
        reason in SKIP_REPORTED
        and row.guid is not None
        and not row.is_from_me
        and message_kind(row) == "message"
    )


def skipped_event(row: RawMessage, reason: str, now: float) -> ChatEvent:
    """One person's message the relay passed without posting, and why."""
    assert row.guid is not None
    sent_at = rows.unix_seconds(row.date)
    try:
        text: str | None = clean_text(rows.message_text(row))
    except Exception:  # the row that was skipped as unreadable: the event still goes
        text = None
    details: dict[str, Any] = {
        "reason": reason,
        "sender": row.sender,
        "sent_at": _iso(row.date) if row.date else None,
        "age_s": int(now - sent_at) if sent_at is not None else None,
        "text": text[:SKIPPED_TEXT_CHARS] if text is not None else None,
        "attachments": len(row.attachments),
    }
    if text is not None and len(text) > SKIPPED_TEXT_CHARS:
        details["text_chars"] = len(text)
    return ChatEvent("message_skipped", row.guid, chat_guid_of(row), row.guid, details)


def skipped_summary(skipped: list[tuple[RawMessage, str]]) -> ChatEvent:
    """Many messages passed in one step (a restored history): counted in one event naming the
    first and last of them, their reasons and chats."""
    guids = [row.guid for row, _ in skipped if row.guid]
    reasons: dict[str, int] = {}
    chats: list[str] = []
    for row, reason in skipped:
        reasons[reason] = reasons.get(reason, 0) + 1
        chat = chat_guid_of(row)
        if chat and chat not in chats and len(chats) < 20:
            chats.append(chat)
    return ChatEvent(
        "message_skipped",
        f"{guids[0]}-{guids[-1]}-{len(skipped)}",
        chats[0] if len(chats) == 1 else None,
        None,
        {
            "count": len(skipped),
            "reasons": reasons,
            "first_message_guid": guids[0],
            "last_message_guid": guids[-1],
            "chats": chats,
        },
    )


def reply_to(row: RawMessage) -> dict[str, Any] | None:
    """The inline-reply target (`thread_originator_guid`/`_part`; `reply_to_guid` usually just
    names the previous message, so it is not used)."""
    if not row.thread_originator_guid:
        return None
    part_text = (row.thread_originator_part or "").split(":", 1)[0]
    return {
        "message_guid": row.thread_originator_guid,
        "part": int(part_text) if part_text.isdigit() else 0,
    }


# -- in-place changes ------------------------------------------------------------------------


def summary_info(blob: bytes | None) -> dict[str, Any]:
    """`message_summary_info` (a binary plist); {} when absent or unreadable."""
    return plist_dict(blob)


def unsent_parts(info: dict[str, Any]) -> tuple[int, ...]:
    parts = info.get("rp")
    if not isinstance(parts, list):
        return ()
    # isdecimal, not isdigit: "²" is a digit that int() refuses.
    return tuple(sorted({int(p) for p in parts if isinstance(p, int) or str(p).isdecimal()}))


def previous_text(info: dict[str, Any], part: int = 0) -> str | None:
    """The version before the current one, from the edit history (`ec[part]`, oldest first)."""
    history = info.get("ec", {}).get(str(part)) if isinstance(info.get("ec"), dict) else None
    if not isinstance(history, list) or len(history) < 2:
        return None
    version = history[-2]
    blob = version.get("t") if isinstance(version, dict) else None
    return typedstream.decode(blob) if isinstance(blob, bytes) else None


def edited_part(info: dict[str, Any]) -> int:
    parts = info.get("ep")
    if isinstance(parts, list) and parts and isinstance(parts[-1], int):
        return int(parts[-1])
    return 0


def _int(value: object) -> int:
    """A date column as an int: SQLite lets any column hold TEXT or REAL, and a fingerprint
    compared with `>` must hold ints on both sides."""
    return value if isinstance(value, int) else 0


def fingerprint(row: WatchedRow) -> Fingerprint:
    edited = _int(row.date_edited)
    own = bool(row.is_from_me)
    date_read = _int(row.date_read)
    return Fingerprint(
        guid=row.guid,
        rowid=row.rowid,
        date=_int(row.date),
        from_me=own,
        date_edited=edited,
        unsent=unsent_parts(summary_info(row.message_summary_info)) if edited else (),
        is_empty=bool(row.is_empty),
        read_at=(date_read or _int(row.date) or 1) if own and (row.is_read or date_read) else 0,
    )


def changes(before: Fingerprint, after: Fingerprint) -> tuple[str, ...]:
    """Which events the change from `before` to `after` stands for, in a fixed order.

    Edits and unsends are reported for incoming messages (the persona's own are the relay's);
    reads for the persona's messages (an incoming row's `is_read` is the Mac's own reading).
    """
    found: list[str] = []
    if not after.from_me:
        newly_unsent = set(after.unsent) - set(before.unsent)
        emptied = after.is_empty and not before.is_empty
        if newly_unsent or emptied:
            found.append("message_unsent")
        elif after.date_edited > before.date_edited:
            found.append("message_edited")
    elif after.read_at and not before.read_at:
        found.append("message_read")
    return tuple(found)


def change_event(
    kind: str,
    before: Fingerprint,
    after: Fingerprint,
    row: RawMessage,
    summary: bytes | None,
) -> ChatEvent:
    """The event for one detected change; `row` is the full row as it is now."""
    info = summary_info(summary)
    chat_guid = chat_guid_of(row)
    if kind == "message_edited":
        return ChatEvent(
            kind,
            f"{after.guid}-{after.date_edited}",
            chat_guid,
            after.guid,
            {
                "text": rows.message_text(row),
                "previous_text": previous_text(info, edited_part(info)),
                "edited_at": _iso(after.date_edited),
                "part": edited_part(info),
            },
        )
    if kind == "message_unsent":
        parts = list(after.unsent) or [0]
        fully = after.is_empty or (not rows.message_text(row) and not row.attachments)
        return ChatEvent(
            kind,
            f"{after.guid}-{after.date_edited}-{'.'.join(map(str, parts))}",
            chat_guid,
            after.guid,
            {
                "parts": parts,
                "fully_unsent": fully,
                "unsent_at": _iso(after.date_edited or after.date),
            },
        )
    return ChatEvent(kind, after.guid, chat_guid, after.guid, {"read_at": _iso(after.read_at)})
