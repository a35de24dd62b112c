"""A contact card (`.vcf`) as the persona can read it: names, phone numbers, e-mail addresses.

Pure functions over the file's text (vCard 3.0 as iOS and macOS write it: `FN`, `N`, `ORG`,
`TEL`, `EMAIL`, `item1.`-grouped properties, folded lines, `\\,` escapes). Phone numbers are
turned into E.164 like chat.db's handles (see phones).

A shared pin from iOS ("Send My Current Location", a place from Maps) also travels as a
vCard, named `*.loc.vcf`, whose only content is a maps.apple.com URL with `ll=lat,lon`
(example written by iOS 14.3 in AirMessage's android client, `LocationAttachmentData.kt`);
`location()` reads it. Not verified on a real Mac here.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from .. import phones

# Cards read from one file: a contact list shared as one .vcf stays bounded.
MAX_CARDS = 50


def _unfold(text: str) -> list[str]:
    """RFC 6350 §3.2: a line starting with a space or tab continues the previous one."""
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += raw[1:]
        elif raw.strip():
            lines.append(raw)
    return lines


def _unescape(value: str) -> str:
    return (
        value.replace("\\n", "\n").replace("\\N", "\n").replace("\\,", ",").replace("\\;", ";")
    ).replace("\\\\", "\\")


def _split(line: str) -> tuple[str, str] | None:
    """`item1.TEL;type=CELL:+1 555` → ("TEL", "+1 555"): the property name without its group."""
    name_part, sep, value = line.partition(":")
    if not sep:
        return None
    name = name_part.split(";", 1)[0]
    name = name.rsplit(".", 1)[-1].upper()
    return name, value.strip()


def _cards(text: str) -> list[list[tuple[str, str]]]:
    cards: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] | None = None
    for line in _unfold(text):
        prop = _split(line)
        if prop is None:
            continue
        name, value = prop
        if name == "BEGIN" and value.upper() == "VCARD":
            current = []
        elif name == "END" and value.upper() == "VCARD":
            if current is not None:
                cards.append(current)
            current = None
        elif current is not None:
            current.append((name, value))
    return cards[:MAX_CARDS]


def _name(props: list[tuple[str, str]]) -> str | None:
    found = {n: v for n, v in reversed(props)}  # the first of each property wins
    if found.get("FN"):
        return _unescape(found["FN"]).strip() or None
    if found.get("N"):
        family, given, *_ = [*found["N"].split(";"), "", ""]
        joined = " ".join(p for p in (_unescape(given), _unescape(family)) if p.strip())
        if joined:
            return joined.strip()
    if found.get("ORG"):
        return _unescape(found["ORG"].split(";")[0]).strip() or None
    return None


def contacts(text: str, region: str) -> list[dict[str, Any]]:
    """Every card in the file: {name, phones: [E.164], emails}; a number that cannot be read
    as a phone number is kept as written rather than dropped."""
    out: list[dict[str, Any]] = []
    for props in _cards(text):
        numbers: list[str] = []
        emails: list[str] = []
        for name, value in props:
            if name == "TEL" and value:
                number = value[4:] if value.lower().startswith("tel:") else value
                e164 = phones.to_e164(number, region) or _unescape(number).strip()
                if e164 not in numbers:
                    numbers.append(e164)
            elif name == "EMAIL" and value and value not in emails:
                emails.append(_unescape(value).strip())
        out.append({"name": _name(props), "phones": numbers, "emails": emails})
    return out


def is_location_card(file_name: str | None) -> bool:
    return bool(file_name) and str(file_name).lower().endswith(".loc.vcf")


def location(text: str) -> dict[str, Any] | None:
    """A shared pin's {latitude, longitude, name?} from its maps URL, or None."""
    for props in _cards(text):
        for name, value in props:
            if name == "URL":
                found = maps_location(_unescape(value))
                if found is not None:
                    card_name = _name(props)
                    if card_name and "name" not in found:
                        found["name"] = card_name
                    return found
    return None


def maps_location(url: str) -> dict[str, Any] | None:
    """{latitude, longitude, name?} from an Apple Maps link (`ll=` or `sll=`, `q=` as its
    name when it is not the coordinates again), or None for any other link."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return None
    if parts.hostname not in ("maps.apple.com", "maps.apple"):
        return None
    query = urllib.parse.parse_qs(parts.query)
    coords = (query.get("ll") or query.get("sll") or query.get("coordinate") or [""])[0]
    lat_text, _, lon_text = coords.partition(",")
    try:
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    found: dict[str, Any] = {"latitude": lat, "longitude": lon}
    name = (query.get("q") or query.get("name") or [""])[0].strip()
    if name and name.replace(" ", "") != coords.replace(" ", ""):
        found["name"] = name
    return found
