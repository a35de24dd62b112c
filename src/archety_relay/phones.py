"""Phone numbers as people type them, matched to the E.164 handles chat.db keeps.

Contacts stores a number as it was typed (`+1 (555) 123-0001`, `(555) 123-0001`,
`0044 7700 900123`); Messages names the same person `+15551230001`. The `phonenumbers` library
(Google's libphonenumber) does the parsing: a number without a country code is read in the
default region, which comes from the persona's own phone number, else ARCHETY_DEFAULT_REGION,
else US. Pure functions over values.
"""

from __future__ import annotations

import phonenumbers

DEFAULT_REGION = "US"


def region_of(persona_phone: str | None, configured: str | None) -> str:
    """The region a number without a country code is read in."""
    if persona_phone:
        try:
            parsed = phonenumbers.parse(persona_phone, None)
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is not None and parsed.country_code:
            region = phonenumbers.region_code_for_country_code(parsed.country_code)
            if region and region != "ZZ":
                return region
    if configured and configured.strip():
        return configured.strip().upper()
    return DEFAULT_REGION


def to_e164(typed: str, region: str) -> str | None:
    """`typed` as E.164 (`+15551230001`), or None when it is no possible phone number."""
    text = typed.strip()
    if not text or "@" in text:
        return None
    candidates = [text]
    if text.startswith("00"):  # an international prefix the region may not use (US: 011)
        candidates.append("+" + text[2:])
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return None


def handle_key(handle: str, region: str) -> str:
    """How a chat.db handle is looked up: e-mail lowercased, a phone number as E.164."""
    if "@" in handle:
        return handle.strip().lower()
    return to_e164(handle, region) or handle.strip()
