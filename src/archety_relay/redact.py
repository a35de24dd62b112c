"""structlog processors that keep secrets, message text and phone numbers out of the logs.

- Any configured secret, anywhere in any value, becomes `[REDACTED]`; so does any `Bearer <token>`.
- Message text (fields named in TEXT_FIELDS) is dropped from events at INFO and above.
- Phone numbers keep country code and area prefix plus the last four digits (`+1555***4567`);
  e-mail addresses keep their first letter and domain (`j***@example.com`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

TEXT_FIELDS = frozenset({"text", "reply_text", "body", "message_text"})
_DEBUG_LEVELS = frozenset({"debug", "notset"})
# Identifiers that are ours or Apple's, never a person's: secrets are scrubbed, digits kept.
_NOT_PERSONAL = frozenset({"message_guid", "guid", "timestamp", "command_id", "event_id", "path"})

_PHONE = re.compile(r"\+?\d[\d\- ().]{7,}\d")
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",]+")


def mask_phone(match: re.Match[str]) -> str:
    raw = match.group(0)
    digits = sum(ch.isdigit() for ch in raw)
    if digits < 9:
        return raw
    plus = "+" if raw.startswith("+") else ""
    only = "".join(ch for ch in raw if ch.isdigit())
    return f"{plus}{only[:4]}***{only[-4:]}"


def mask_identifiers(text: str) -> str:
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(mask_phone, text)


class Redactor:
    """The processor. `secrets` can be replaced at run time (a rotated secret)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = tuple(s for s in secrets if s)

    def add_secret(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets = (*self.secrets, secret)

    def scrub(self, value: Any, personal: bool = True) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, "[REDACTED]")
            value = _BEARER.sub(r"\1[REDACTED]", value)
            return mask_identifiers(value) if personal else value
        if isinstance(value, (list, tuple)):
            return [self.scrub(v, personal) for v in value]
        if isinstance(value, dict):
            return {k: self.scrub(v, k not in _NOT_PERSONAL) for k, v in value.items()}
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.scrub(str(value), personal)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        level = str(event_dict.get("level", method_name)).lower()
        if level not in _DEBUG_LEVELS:
            for name in TEXT_FIELDS & event_dict.keys():
                del event_dict[name]
        for key, value in list(event_dict.items()):
            if key != "event":
                event_dict[key] = self.scrub(value, key not in _NOT_PERSONAL)
        return event_dict
