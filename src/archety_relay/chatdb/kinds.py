"""What kind of thing a person sent: pure decisions over a row, beside rows.to_message.

    message_kind(...)       text | picture | voice | file | contact | sticker | location |
                            poll | handwriting | digital_touch | payment | app
    attachment_kind(...)    picture | sticker | voice | audio | video | contact | location | file
    effect(style_id)        Messages' send effect as a short name
    describe(row, text)     all of it for one row: what rows.to_message puts in the Message

Nothing is dropped for being of an unknown kind: an app balloon nobody mapped is `app`, with
`metadata.app` naming its bundle id, and goes to the persona with what can be read of it.
Sources are cited where each mapping is made; none was checked on a real Mac here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any, Protocol

from ..model import Attachment
from . import balloons, vcard, voice


class RowLike(Protocol):
    """The columns of a row (rows.RawMessage) that say what was sent; named here, not
    imported, so kinds stays below rows."""

    @property
    def attributed_body(self) -> bytes | None: ...
    @property
    def attachments(self) -> tuple[Attachment, ...]: ...
    @property
    def balloon_bundle_id(self) -> str | None: ...
    @property
    def is_audio_message(self) -> int | None: ...
    @property
    def expressive_send_style_id(self) -> str | None: ...
    @property
    def payload_data(self) -> bytes | None: ...


# message.expressive_send_style_id → effect name (imessage-exporter
# `imessage-database/src/message_types/expressives.rs` and `Message::get_expressive`).
EFFECTS = {
    "com.apple.MobileSMS.expressivesend.impact": "slam",
    "com.apple.MobileSMS.expressivesend.loud": "loud",
    "com.apple.MobileSMS.expressivesend.gentle": "gentle",
    "com.apple.MobileSMS.expressivesend.invisibleink": "invisible_ink",
    "com.apple.messages.effect.CKConfettiEffect": "confetti",
    "com.apple.messages.effect.CKHappyBirthdayEffect": "balloons",
    "com.apple.messages.effect.CKFireworksEffect": "fireworks",
    "com.apple.messages.effect.CKLasersEffect": "lasers",
    "com.apple.messages.effect.CKHeartEffect": "love",
    "com.apple.messages.effect.CKShootingStarEffect": "shooting_star",
    "com.apple.messages.effect.CKSparklesEffect": "shooting_star",
    "com.apple.messages.effect.CKEchoEffect": "echo",
    "com.apple.messages.effect.CKSpotlightEffect": "spotlight",
    "com.apple.messages.effect.CKCelebrationEffect": "celebration",
}

PICTURE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif", ".heics", ".bmp"}
)
PICTURE_UTIS = frozenset(
    {
        "public.jpeg",
        "public.png",
        "com.compuserve.gif",
        "org.webmproject.webp",
        "public.webp",
        "public.tiff",
        "public.heic",
        "public.heif",
        "public.heics",
        "com.microsoft.bmp",
    }
)
VCARD_TYPES = frozenset({"text/vcard", "text/x-vcard", "text/directory"})
VCARD_UTIS = frozenset({"public.vcard"})
VIDEO_UTIS = frozenset({"public.movie", "com.apple.quicktime-movie", "public.mpeg-4"})

# Attachment kind → message kind, in the order a message with several is named.
_BY_ATTACHMENT = (
    ("voice", "voice"),
    ("sticker", "sticker"),
    ("location", "location"),
    ("contact", "contact"),
    ("picture", "picture"),
)


def effect(style_id: str | None) -> str | None:
    """The effect's short name; an id not mapped passes through as it is."""
    if not style_id:
        return None
    return EFFECTS.get(style_id, style_id)


def is_picture(mime_type: str | None, uti: str | None, name: str | None) -> bool:
    """A picture by MIME type, UTI or (when neither is declared) the file name."""
    mime, kind = (mime_type or "").lower(), (uti or "").lower()
    if mime.startswith("image/") or kind in PICTURE_UTIS:
        return True
    if mime or kind:  # a declared non-picture type (audio, video, vCard, PDF) wins over the name
        return False
    return PurePath(name or "").suffix.lower() in PICTURE_EXTENSIONS


def is_vcard(mime_type: str | None, uti: str | None, name: str | None) -> bool:
    if (mime_type or "").lower() in VCARD_TYPES or (uti or "").lower() in VCARD_UTIS:
        return True
    return (name or "").lower().endswith(".vcf")


def attachment_kind(
    mime_type: str | None,
    uti: str | None,
    name: str | None,
    *,
    is_sticker: bool,
    is_audio_message: bool,
) -> str:
    if is_sticker:
        return "sticker"
    if voice.is_audio(mime_type, uti, name):
        return "voice" if is_audio_message else "audio"
    if is_vcard(mime_type, uti, name):
        return "location" if vcard.is_location_card(name) else "contact"
    if is_picture(mime_type, uti, name):
        return "picture"
    mime = (mime_type or "").lower()
    if mime.startswith("video/") or (uti or "").lower() in VIDEO_UTIS:
        return "video"
    return "file"


def message_kind(text: str, balloon_bundle_id: str | None, attachment_kinds: list[str]) -> str:
    """The message's kind: an app balloon first, then its attachments, then its text."""
    app = balloons.app_id(balloon_bundle_id)
    if app is not None and app != balloons.URL_BALLOON:
        return balloons.APP_KINDS.get(app, "app")
    for attachment, kind in _BY_ATTACHMENT:
        if attachment in attachment_kinds:
            return kind
    if attachment_kinds:
        return "file"
    if text and " " not in text.strip() and vcard.maps_location(text) is not None:
        return "location"
    return "text"


@dataclass(frozen=True)
class Content:
    """What a row holds, as the Message carries it."""

    kind: str
    text: str
    attachments: tuple[Attachment, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)  # top of the body: poll, location
    meta: Mapping[str, Any] = field(default_factory=dict)  # metadata: effect, app, app_name


def is_app_row(row: RowLike) -> bool:
    """A balloon of an iMessage app (not a link preview): a message even without text."""
    app = balloons.app_id(row.balloon_bundle_id)
    return app is not None and app != balloons.URL_BALLOON


def describe(row: RowLike, text: str) -> Content:
    """Kind, text, attachments (each with its kind) and the fields only some kinds carry."""
    audio = bool(row.is_audio_message)
    attachments = tuple(_described_attachment(a, row, audio) for a in row.attachments)
    kind = message_kind(text, row.balloon_bundle_id, [a.kind or "file" for a in attachments])
    fields: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if (name := effect(row.expressive_send_style_id)) is not None:
        meta["effect"] = name
    app = balloons.app_id(row.balloon_bundle_id)
    if app is not None and app != balloons.URL_BALLOON:
        meta["app"] = app
        if app in balloons.APP_NAMES:
            meta["app_name"] = balloons.APP_NAMES[app]
    if kind == "voice":
        # The persona reads what was said: Apple's transcript is the text ("" until there is one).
        text = next(
            (str(a.extra["transcript"]) for a in attachments if a.extra.get("transcript")), ""
        )
    elif kind == "poll":
        found = balloons.poll(row.payload_data)
        if found is not None:
            fields["poll"] = {"question": found["question"], "options": found["options"]}
    elif kind == "location" and not attachments:
        fields["location"] = vcard.maps_location(text)
    return Content(kind, text, attachments, fields, meta)


def _described_attachment(item: Attachment, row: RowLike, audio_message: bool) -> Attachment:
    kind = attachment_kind(
        item.mime_type,
        item.uti,
        item.transfer_name or item.path,
        is_sticker=item.is_sticker,
        is_audio_message=audio_message,
    )
    extra: dict[str, Any] = dict(item.extra)
    if kind == "voice":
        transcript = voice.transcript_in_user_info(item.user_info)
        if transcript is None:
            transcript = voice.transcript_in_body(row.attributed_body)
        extra.update(
            transcript=transcript,
            transcript_source="apple" if transcript else None,
            duration_s=None,
        )
    return replace(item, kind=kind, extra=extra)
