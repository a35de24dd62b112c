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

_CHAT_GUID = re.compile(r"(iMessage|SMS|RCS|any);([-+]);([^\x00-\x1f\x7f]+)")
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
    if match is None or match.group(2) != "-" or match.group(3).startswith("chat"):
        return None
    return match.group(3)


def service_of(guid: str) -> str | None:
    """The service a guid names, or None for macOS 26's `any` (read chat.service_name then)."""
    match = _CHAT_GUID.fullmatch(guid)
    return match.group(1) if match is not None and match.group(1) in SERVICES else None
