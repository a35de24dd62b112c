"""structlog processors that keep secrets, message text and phone numbers out of the logs.

- Any configured secret, anywhere in any value, becomes `[REDACTED]`; so does any `Bearer <token>`.
- Message text (fields named in TEXT_FIELDS) is dropped from events at INFO and above.
- Phone numbers keep country code and area prefix plus the last four digits (`+1555***4567`);
  e-mail addresses keep their first letter and domain (`j***@example.com`).
- A backend's answer (fields named in RESPONSE_FIELDS) goes through `scrub_body` first: error
  bodies echo what we sent them (FastAPI/pydantic 422s carry the message text as `input`).
"""

from __future__ import annotations

import json
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

# Backend answers kept for people (dead letters, diagnostics): what is dropped from them.
RESPONSE_FIELDS = frozenset({"response", "response_body"})
# Keys under which an answer echoes our request: pydantic's `input`, FastAPI's `body` (its
# documented handler returns the request), our own message fields.
ECHO_KEYS = TEXT_FIELDS | {"input", "sender", "participants", "handle", "from", "to"}
SECRET_KEYS = frozenset(
    {"authorization", "token", "access_token", "secret", "password", "api_key", "apikey"}
)
OMITTED = "[omitted]"
# Long runs of letters and digits (tokens, keys, JWT parts), but not UUID-shaped guids.
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_+=-])(?=[A-Za-z0-9_+=-]*\d)(?=[A-Za-z0-9_+=-]*[A-Za-z])"
    r"[A-Za-z0-9_+=-]{24,}(?![A-Za-z0-9_+=-])"
)
_UUID = re.compile(r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
_ECHO_KEY = re.compile(
    r'"(' + "|".join(sorted(ECHO_KEYS | SECRET_KEYS)) + r')"\s*:\s*', re.IGNORECASE
)


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


def scrub_body(body: str, secrets: Iterable[str] = ()) -> str:
    """A backend's answer made fit to keep and show: echoed request fields, secret-like values,
    Bearer tokens, phone numbers and e-mail addresses removed or masked.

    Works on whole JSON, on JSON cut short (answers are stored as excerpts) and on plain text.
    """
    try:
        text = json.dumps(_drop_parsed(json.loads(body)), ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, cut short, or nested past the stack
        text = _drop_echoes(body)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    text = _BEARER.sub(r"\1[REDACTED]", text)
    text = _TOKEN.sub(lambda m: m.group(0) if _UUID.fullmatch(m.group(0)) else "[REDACTED]", text)
    # Message guids are ours and useful to see; their digit runs are not phone numbers.
    kept = [m.span() for m in _UUID.finditer(text)]
    pieces, pos = [], 0
    for start, end in kept:
        pieces += [mask_identifiers(text[pos:start]), text[start:end]]
        pos = end
    return "".join([*pieces, mask_identifiers(text[pos:])])


def _drop_parsed(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (OMITTED if str(k).lower() in ECHO_KEYS | SECRET_KEYS else _drop_parsed(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_drop_parsed(v) for v in value]
    return value


def _drop_echoes(text: str) -> str:
    """`"input": <value>` → `"input": "[omitted]"` in text that is not (whole) JSON: the value is
    skipped as far as it goes, to the end of the text when it was cut off."""
    out: list[str] = []
    pos = 0
    for match in _ECHO_KEY.finditer(text):
        if match.start() < pos:
            continue  # inside a value already dropped
        out.append(text[pos : match.end()] + f'"{OMITTED}"')
        pos = _value_end(text, match.end())
    out.append(text[pos:])
    return "".join(out)


def _value_end(text: str, i: int) -> int:
    """Where the JSON value starting at `i` ends (tolerant: the end of `text` if it is cut)."""
    depth = 0
    in_string = False
    escaped = False
    for j in range(i, len(text)):
        ch = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 0:
                    return j + 1
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            if depth == 0:
                return j
            depth -= 1
            if depth == 0:
                return j + 1
        elif ch == "," and depth == 0:
            return j
    return len(text)


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
            if key in RESPONSE_FIELDS and isinstance(value, str):
                event_dict[key] = scrub_body(value, self.secrets)
            elif key != "event":
                event_dict[key] = self.scrub(value, key not in _NOT_PERSONAL)
        return event_dict
