"""What a Messages chat guid looks like, and what can be read from one. Pure functions.

    iMessage;-;+15555550101      a direct chat (macOS 14/15)
    SMS;+;chat123456789          a group chat
    any;-;+15555550101           macOS 26 (Tahoe) writes `any` for every service

A chat guid reaches osascript as an argument, so anything else is refused before it gets there:
a value starting with `-` would be read as an osascript option (review #7), and a control
character (NUL above all) cannot travel in argv. Commands, replies and the send path all use
`is_chat_guid`, so a bad value is rejected where it arrives and again where it would be sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CHAT_GUID = re.compile(r"(iMessage|SMS|RCS|any);([-+]);([^\x00-\x1f\x7f]+)")
# A group's identifier (`chat` and digits); macOS 26 may spell a group `any;-;chat…`.
_GROUP_ID = re.compile(r"chat\d+")
MAX_CHARS = 512
SERVICES = ("iMessage", "SMS", "RCS")


def is_chat_guid(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_CHARS
        and _CHAT_GUID.fullmatch(value) is not None
    )


def direct_handle(guid: str) -> str | None:
    """The other person's address for a direct chat (`…;-;<handle>`), None for a group."""
    match = _CHAT_GUID.fullmatch(guid)
    if match is None or match.group(2) != "-" or _GROUP_ID.fullmatch(match.group(3)):
        return None
    return match.group(3)


def service_of(guid: str) -> str | None:
    """The service a guid names, or None for macOS 26's `any` (read chat.service_name then)."""
    match = _CHAT_GUID.fullmatch(guid)
    return match.group(1) if match is not None and match.group(1) in SERVICES else None


@dataclass(frozen=True)
class Target:
    """Everything the send script needs to find a chat, in the order it tries them.

    macOS 26 refuses `chat id "any;-;…"` for some chats (-1728) and may not list a chat.db guid
    among its live chats at all, so the script tries the guid as stored, then the other spelling
    (`any` ⇄ the service), then, for a direct chat, the participant on the right service."""

    chat_guid: str
    alt_chat_guid: str  # "" when there is no other spelling
    handle: str  # "" for a group chat: no participant fallback
    service: str  # "iMessage" | "SMS" | "RCS": the account type for the participant form
    stored_guid: str = ""  # the guid as chat.db spells it, when no send may use it ("" if same)

    @property
    def chat_guids(self) -> tuple[str, ...]:
        """Every spelling to look the chat up by in chat.db."""
        others = (g for g in (self.alt_chat_guid, self.stored_guid) if g)
        return tuple(dict.fromkeys((self.chat_guid, *others)))


def send_target(guid: str, service_name: str | None) -> Target:
    """The target for a valid chat guid; `service_name` is chat.service_name, when known."""
    match = _CHAT_GUID.fullmatch(guid)
    if match is None:
        raise ValueError("not a chat guid")
    prefix, kind, rest = match.groups()
    service = prefix if prefix in SERVICES else service_name if service_name in SERVICES else None
    service = service or "iMessage"
    if _GROUP_ID.fullmatch(rest):
        # A group is never addressed as `…;-;chat…`, the form macOS 26 reports for some groups:
        # a send to it "succeeds" and writes an empty ghost row in no chat (steipete/imsg#90).
        # Only the `+` spellings are tried; chat.db is still searched under the stored one.
        kind = "+"
    first = f"{prefix};{kind};{rest}"
    alt = f"{service};{kind};{rest}" if prefix == "any" else f"any;{kind};{rest}"
    return Target(first, alt, direct_handle(guid) or "", service, guid if guid != first else "")
