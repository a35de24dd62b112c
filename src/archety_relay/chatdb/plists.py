"""Binary plists inside chat.db columns (`message_summary_info`, `payload_data`,
`attachment.user_info`), read so that a damaged one is just an empty dict."""

from __future__ import annotations

import plistlib
from typing import Any


def plist_dict(blob: bytes | None) -> dict[str, Any]:
    """The plist's top-level dict; {} when absent, unreadable or not a dict."""
    if not blob:
        return {}
    try:
        value = plistlib.loads(bytes(blob))
    except Exception:  # plistlib raises several unrelated types on damaged input
        return {}
    return value if isinstance(value, dict) else {}
