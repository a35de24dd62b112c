"""iMessage app balloons: which app a row came from, and what a poll says.

Pure functions over `message.balloon_bundle_id` and `message.payload_data`. Sources (public,
none checked on a real Mac here):
- bundle ids and the `<plugin>:<team>:<app>` form: imessage-exporter
  `imessage-database/src/tables/messages.rs` `parse_balloon_bundle_id` and `variant()`;
  Digital Touch: `com.apple.DigitalTouchBalloonProvider` (exporter `digital_touch` module,
  BlueBubbles app `balloon_bundle_widget.dart`);
- polls (iOS 26): bundle `…:com.apple.messages.Polls`; `payload_data` is an NSKeyedArchiver
  plist whose URL is `data:,<JSON>` (base64 or percent-encoded): the poll
  `{title, orderedPollOptions: [{optionIdentifier, text | pollOptionText}]}`, a vote
  `{votes: [{voteOptionIdentifier, participantHandle}]}`, either at the top or under `item`
  (photon-hq advanced-imessage-kit `poll-utils.ts`; imsg `Tests/imsgTests/CommandTestDatabase.swift`
  `pollPayload`). Votes are rows with `associated_message_type = 4000` naming the poll.
"""

from __future__ import annotations

import base64
import binascii
import json
import plistlib
import urllib.parse
from typing import Any

from .plists import plist_dict

URL_BALLOON = "com.apple.messages.URLBalloonProvider"
POLLS = "com.apple.messages.Polls"
# App bundle id → the message kind it is (anything else is kind `app`).
APP_KINDS = {
    POLLS: "poll",
    "com.apple.Handwriting.HandwritingProvider": "handwriting",
    "com.apple.DigitalTouchBalloonProvider": "digital_touch",
    "com.apple.PassbookUIService.PeerPaymentMessagesExtension": "payment",
}
# Apple's own apps that stay kind `app`, named for the persona (exporter's CustomBalloon).
APP_NAMES = {
    "com.apple.SafetyMonitorApp.SafetyMonitorMessages": "check_in",
    "com.apple.findmy.FindMyMessagesApp": "find_my",
    "com.apple.ActivityMessagesApp.MessagesExtension": "fitness",
    "com.apple.mobileslideshow.PhotosMessagesApp": "slideshow",
}
# Options and votes read from one poll: a payload is bounded before it reaches the backend.
MAX_OPTIONS = 50
MAX_TEXT = 500


def app_id(balloon_bundle_id: str | None) -> str | None:
    """`com.apple.messages.MSMessageExtensionBalloonPlugin:0000000000:<app>` → `<app>`; a
    plain bundle id is its own app id."""
    if not balloon_bundle_id:
        return None
    parts = balloon_bundle_id.split(":")
    if len(parts) == 1:
        return parts[0]
    return parts[2] if len(parts) > 2 and parts[2] else None


def _data_url(payload: bytes | None) -> str | None:
    archive = plist_dict(payload)
    url = archive.get("URL")
    if isinstance(url, str) and url.startswith("data:"):
        return url
    objects = archive.get("$objects")
    if isinstance(objects, list):
        for item in objects:
            if isinstance(item, str) and item.startswith("data:"):
                return item
    return None


def _json_of(payload: bytes | None) -> dict[str, Any] | None:
    url = _data_url(payload)
    if url is None:
        return None
    data = url.split(",", 1)[1] if "," in url else ""
    data = urllib.parse.unquote(data.split("?", 1)[0])
    for attempt in (data, None):
        text = attempt
        if text is None:
            try:
                text = base64.b64decode(data + "=" * (-len(data) % 4)).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
        try:
            found = json.loads(text)
        except ValueError:
            continue
        if isinstance(found, dict):
            item = found.get("item")
            return item if isinstance(item, dict) else found
    return None


def _text(value: object) -> str | None:
    return value.strip()[:MAX_TEXT] if isinstance(value, str) and value.strip() else None


def poll(payload: bytes | None) -> dict[str, Any] | None:
    """{question, options: [text], option_ids: {id: text}} of a poll row, or None."""
    found = _json_of(payload)
    if found is None:
        return None
    options: list[str] = []
    ids: dict[str, str] = {}
    for option in (found.get("orderedPollOptions") or [])[:MAX_OPTIONS]:
        if not isinstance(option, dict):
            continue
        text = _text(option.get("text")) or _text(option.get("pollOptionText"))
        if text is None:
            continue
        options.append(text)
        if isinstance(option.get("optionIdentifier"), str):
            ids[option["optionIdentifier"]] = text
    question = _text(found.get("title"))
    if question is None and not options:
        return None
    return {"question": question, "options": options, "option_ids": ids}


def poll_votes(payload: bytes | None) -> list[dict[str, str | None]]:
    """[{option_id, participant}] of a vote row (a changed vote replaces the earlier row)."""
    found = _json_of(payload)
    votes = found.get("votes") if found else None
    out: list[dict[str, str | None]] = []
    for vote in (votes or [])[:MAX_OPTIONS] if isinstance(votes, list) else []:
        if isinstance(vote, dict) and isinstance(vote.get("voteOptionIdentifier"), str):
            out.append(
                {
                    "option_id": vote["voteOptionIdentifier"],
                    "participant": _text(vote.get("participantHandle")),
                }
            )
    return out


def poll_payload(content: dict[str, Any]) -> bytes:
    """A payload_data blob holding `content` as the poll app writes it (a keyed archive whose
    URL is `data:,<base64 JSON>`): for tests and the demo."""
    encoded = base64.b64encode(json.dumps(content, sort_keys=True).encode()).decode()
    archive = {
        "$version": 100000,
        "$archiver": "NSKeyedArchiver",
        "$top": {"root": plistlib.UID(1)},
        "$objects": [
            "$null",
            {"URL": plistlib.UID(2), "an": plistlib.UID(4), "$class": plistlib.UID(5)},
            {"NS.base": plistlib.UID(0), "NS.relative": plistlib.UID(3)},
            f"data:,{encoded}",
            "Polls",
            {"$classname": "NSDictionary", "$classes": ["NSDictionary", "NSObject"]},
        ],
    }
    return plistlib.dumps(archive, fmt=plistlib.FMT_BINARY)
