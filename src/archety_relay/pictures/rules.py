"""Decisions about a message's attachments, as functions of values (no I/O, no Pillow).

    is_photo(entry)                 which attachments go to `POST /photo/upload` at all
    within(path, roots)             is a resolved file inside Messages' own folders
    readiness(state, file)          is the file there yet: ready | waiting | gone
    upload_result(outcome)          what an upload's HTTP outcome means for the picture
    settled_body(body, records)     the message body as posted once its pictures are settled

Attachment statuses on the wire: `uploaded` (with `uploaded_photo_id`), `pending` (still
downloading from iCloud when the message went; an `attachment_uploaded` event follows) and
`skipped` (with `skip_reason`). Inside the relay a picture is also `waiting` (its message waits).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..backend import answers
from ..chatdb import kinds
from ..chatdb.rows import AttachmentState
from ..policy import HttpOutcome, Verdict, verdict

UPLOADED, PENDING, SKIPPED, WAITING = "uploaded", "pending", "skipped", "waiting"
# Terminal for the message: it can be posted with this picture's status.
SETTLED = (UPLOADED, PENDING, SKIPPED)

UNSUPPORTED = "unsupported_type"
GONE = "attachment_gone"  # the attachment row left chat.db (deleted, or the message unsent)
NOT_DOWNLOADED = "not_downloaded"  # still not on disk after the follow-up window
OUTSIDE = "outside_attachments"  # outside Messages' folders (`..`, a symlink, a hard link)
DECODER_CRASHED = "decoder_crashed"  # converting it killed the process, twice
PHOTO_STEP_FAILED = "photo_step_failed"  # preparing the message's pictures kept raising

# Conversions of one picture that may start and never end (the process died) before it is
# given up. One is forgiven: a reboot or a kill -9 can land mid-conversion.
CRASHED_CONVERSIONS = 2

# The folders beside chat.db where Messages keeps the files of messages: Attachments for what
# is sent and received, StickerCache for stickers (imessage-exporter's attachment.rs names
# `~/Library/Messages/Attachments` its DEFAULT_ATTACHMENT_ROOT; its test data has a received
# sticker at `~/Library/Messages/StickerCache/<hash>-<guid>/<guid>.heic`). Not checked on a Mac.
MESSAGES_FOLDERS = ("Attachments", "StickerCache")

# Messages' transfer_state once a file is complete on disk.
TRANSFER_FINISHED = 5


@dataclass(frozen=True)
class UploadResult:
    """An upload's outcome for the picture: a status, or `retry` with the HTTP outcome."""

    status: str  # UPLOADED | SKIPPED | "retry"
    photo_id: str | None = None
    skip_reason: str | None = None
    verdict: Verdict | None = None


def has_attachments(body: bytes) -> bool:
    """Cheap pre-check on a frozen body, so text-only messages never pay for JSON parsing."""
    return b'"attachments"' in body


def attachment_entries(body: bytes) -> list[dict[str, Any]]:
    parsed = json.loads(body)
    entries = parsed.get("attachments") if isinstance(parsed, dict) else None
    return [e for e in entries or [] if isinstance(e, dict) and e.get("guid")]


def is_photo(entry: dict[str, Any]) -> bool:
    """A picture Pillow can open (HEIC, stickers included) by MIME type, UTI or file name;
    a voice note, a contact card or a video never is (chatdb.kinds decides for both)."""
    name = entry.get("transfer_name") or entry.get("path") or ""
    return kinds.is_picture(entry.get("mime_type"), entry.get("uti"), str(name))


def within(path: str, roots: Iterable[str]) -> bool:
    """Is `path` strictly inside one of `roots`? Both already resolved (no `..`, no symlinks):
    the relay has Full Disk Access, and a filename in chat.db must not make it upload a file
    from anywhere else on the Mac."""
    return any(
        path != root and posixpath.commonpath([root, path]) == root
        for root in roots
        if posixpath.isabs(root) and posixpath.isabs(path)
    )


def confined(resolved: str, roots: Iterable[str], links: int) -> bool:
    """May the relay read this file? It must lie inside one of `roots` once resolved (see
    `within`) and have one name only: `links` is its st_nlink (1 when it is missing).

    A hard link needs no `..` and no symlink: a file of the Mac hard-linked into Attachments
    resolves inside it and would pass `within` alone. Messages has no reason to make one: a
    copy on the same APFS volume is a clone, a new inode with one link (Apple's FileManager
    `copyItem`; eclecticlight.co, "How can you tell whether a file has been cloned in APFS",
    2021-04-02), and we found no public report of Messages hard-linking an attachment. Not
    checked on a Mac: if Messages ever does link one, that picture or card is skipped as
    `outside_attachments` with a warning, and its message still goes."""
    return links <= 1 and within(resolved, roots)


def readiness(state: AttachmentState | None, file_size: int | None) -> str:
    """ "ready" when Messages finished the transfer and the file is on disk, "gone" when the
    row no longer exists, else "waiting" (downloading, or offloaded to iCloud: transfer_state 0
    with ck_sync_state 1 or 4 until someone opens it)."""
    if state is None:
        return "gone"
    if state.transfer_state == TRANSFER_FINISHED and state.path and file_size:
        return "ready"
    return "waiting"


def upload_result(outcome: HttpOutcome) -> UploadResult:
    """2xx: uploaded (its photo_id); 5xx/429/no answer/401/403: retry like a message;
    any other 4xx: this picture is skipped as `upload_rejected_<status>`, the message goes on."""
    decided = verdict(outcome)
    if decided is Verdict.DELIVERED:
        return UploadResult(UPLOADED, photo_id=photo_id(outcome.body))
    if decided is Verdict.DEAD_LETTER:
        return UploadResult(SKIPPED, skip_reason=f"upload_rejected_{outcome.status}")
    return UploadResult("retry", verdict=decided)


def photo_id(answer: str) -> str | None:
    try:
        parsed = answers.loads(answer)
    except ValueError:
        return None
    value = parsed.get("photo_id") if isinstance(parsed, dict) else None
    return str(value) if value not in (None, "") else None


def upload_fields(body: bytes, attachment_guid: str, agent_id: str) -> dict[str, str]:
    """The text parts of an upload, from the message's frozen body: today's names and the ones
    the previous edge client used for the same things (user_phone, is_group, caption)."""
    message = json.loads(body)
    mode = str(message.get("mode") or "direct")
    fields = {
        "attachment_guid": attachment_guid,
        "message_guid": str(message.get("message_guid") or ""),
        "chat_guid": str(message.get("chat_guid") or ""),
        "sender": str(message.get("sender") or ""),
        "mode": mode,
        "participants": json.dumps(message.get("participants") or [], ensure_ascii=False),
        "edge_agent_id": agent_id,
        "user_phone": str(message.get("sender") or ""),
        "is_group": "true" if mode == "group" else "false",
        "caption": str(message.get("text") or ""),
    }
    if message.get("context"):
        fields["context"] = json.dumps(message["context"], ensure_ascii=False)
    return fields


def wire_entry(entry: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """One `attachments[]` entry as posted: today's fields plus what became of the picture."""
    status = record["status"]
    out = {**entry, "is_photo": bool(record["is_photo"]), "status": status}
    out["skipped"] = status == SKIPPED  # the previous edge client's flag for the same thing
    if status == UPLOADED and record.get("photo_id"):
        out["uploaded_photo_id"] = record["photo_id"]
    if status == SKIPPED:
        out["skip_reason"] = record.get("skip_reason") or "unknown"
    return out


def settled_body(body: bytes, records: dict[str, dict[str, Any]]) -> bytes:
    """The frozen body with each attachment's outcome filled in; the key order of everything
    else is kept, so the bytes are a function of the stored body and the records."""
    message = json.loads(body)
    message["attachments"] = [
        wire_entry(e, records[e["guid"]]) if e.get("guid") in records else e
        for e in message.get("attachments") or []
    ]
    metadata = message.get("metadata")
    if isinstance(metadata, dict):
        metadata["has_attachment"] = True
    else:
        message["metadata"] = {"has_attachment": True}
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
