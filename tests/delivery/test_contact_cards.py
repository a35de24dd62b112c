"""A contact card someone sends reaches the persona as the person it describes: name, phone
numbers in E.164 (as chat.db names people), e-mail addresses. A shared pin (`*.loc.vcf`) is a
location. The `.vcf` files are written the way iOS writes them (vCard 3.0, folded lines)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from conftest import ALICE, posted

from archety_relay.chatdb import vcard
from archety_relay.demo.messages_writer import AttachmentSpec, MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay

JOHN = (
    "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//iPhone OS 18.1//EN\r\n"
    "N:Appleseed;John;;;\r\nFN:John Appleseed\r\nORG:Apple;\r\n"
    "item1.TEL;type=CELL;type=VOICE;type=pref:+1 (555) 123-0001\r\n"
    "TEL;type=HOME:(555) 123-0002\r\n"
    "item2.EMAIL;type=INTERNET;type=pref:john.appleseed@exa\r\n mple.com\r\nEND:VCARD\r\n"
)
JANE = "BEGIN:VCARD\r\nVERSION:3.0\r\nN:Doe;Jane;;;\r\nTEL:0044 7700 900123\r\nEND:VCARD\r\n"
PIN = (
    "BEGIN:VCARD\nVERSION:3.0\nPRODID:-//Apple Inc.//iPhone OS 14.3//EN\nN:;Current Location;;;\n"
    "FN:Current Location\nURL;type=pref:http://maps.apple.com/?ll=50.894967\\,4.341626&q="
    "50.894967\\,4.341626\nEND:VCARD\n"
)


def card(
    tmp_path: Path, name: str, text: str, *, downloaded: bool = True, folder: str = "Attachments"
) -> AttachmentSpec:
    """A .vcf attachment; its file where Messages keeps attachments (beside chat.db)."""
    path = tmp_path / "Messages" / folder / "0c" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if downloaded:
        path.write_text(text)
    return AttachmentSpec(
        str(path),
        "text/vcard",
        name,
        len(text),
        "public.vcard",
        5 if downloaded else 0,
        0 if downloaded else 1,
    )


def test_a_contact_card_carries_the_person(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """kind `contact`; the entry's `contact` has the name and the numbers as E.164, however
    they were typed; a file of two cards lists both under `contacts`."""
    relay = make_relay()
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message(
        None,
        sender=ALICE,
        chat=chat,
        guid="C1",
        attachments=[card(tmp_path, "John Appleseed.vcf", JOHN)],
    )
    writer.message(
        None,
        sender=ALICE,
        chat=chat,
        guid="C2",
        attachments=[card(tmp_path, "Two.vcf", JOHN + JANE)],
    )
    got = posted(relay, backend)
    assert got["C1"]["kind"] == "contact"
    (entry,) = got["C1"]["attachments"]
    assert (entry["kind"], entry["is_photo"]) == ("contact", False)
    assert entry["contact"] == {
        "name": "John Appleseed",
        "phones": ["+15551230001", "+15551230002"],
        "emails": ["john.appleseed@example.com"],
    }
    both = got["C2"]["attachments"][0]
    assert [c["name"] for c in both["contacts"]] == ["John Appleseed", "Jane Doe"]
    assert both["contacts"][1]["phones"] == ["+447700900123"]
    assert backend.uploads(accepted_only=False) == []


def test_a_shared_pin_is_a_location(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """iOS's "Send My Current Location" card (`CL.loc.vcf`): kind `location` with its
    coordinates, on the message and on the attachment entry."""
    relay = make_relay()
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message(
        None, sender=ALICE, chat=chat, guid="L1", attachments=[card(tmp_path, "CL.loc.vcf", PIN)]
    )
    got = posted(relay, backend)["L1"]
    place = {"latitude": 50.894967, "longitude": 4.341626, "name": "Current Location"}
    assert (got["kind"], got["location"], got["attachments"][0]["location"]) == (
        "location",
        place,
        place,
    )


def test_a_card_still_downloading_goes_without_its_contents(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """A card whose file never came within ARCHETY_ATTACHMENT_WAIT: the message still goes, a
    `contact` without the card's contents."""
    relay = make_relay(ARCHETY_ATTACHMENT_WAIT="0")
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message(
        "here's his number",
        sender=ALICE,
        chat=chat,
        guid="C3",
        attachments=[card(tmp_path, "Bob.vcf", JOHN, downloaded=False)],
    )
    got = posted(relay, backend)["C3"]
    assert (got["kind"], got["text"]) == ("contact", "here's his number")
    assert "contact" not in got["attachments"][0]


def test_vcard_reading_is_lenient() -> None:
    """Names from FN, else N, else ORG; `tel:` URIs; a number that is no phone number is kept as
    written; a file with no card gives none; numbers without a country code follow the region."""
    text = (
        "BEGIN:VCARD\nN:Smith;Ann;;;\nTEL;VALUE=uri:tel:+1-555-123-0003\nTEL:ext. 12\nEND:VCARD\n"
        "BEGIN:VCARD\nORG:Acme Plumbing;\nTEL:020 7946 0018\nEND:VCARD\n"
    )
    assert vcard.contacts(text, "GB") == [
        {"name": "Ann Smith", "phones": ["+15551230003", "ext. 12"], "emails": []},
        {"name": "Acme Plumbing", "phones": ["+442079460018"], "emails": []},
    ]
    assert vcard.contacts("not a card", "US") == []
    assert vcard.location("BEGIN:VCARD\nURL:https://example.com/\nEND:VCARD\n") is None


def test_a_card_outside_messages_folders_is_not_read(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """A filename in chat.db pointing elsewhere on the Mac (here beside chat.db, not in
    Attachments) is never opened: the message goes without the card's contents."""
    relay = make_relay(ARCHETY_ATTACHMENT_WAIT="0")
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message(
        None,
        sender=ALICE,
        chat=chat,
        guid="C4",
        attachments=[card(tmp_path, "x.vcf", JOHN, folder="Elsewhere")],
    )
    got = posted(relay, backend)["C4"]
    assert got["kind"] == "contact" and "contact" not in got["attachments"][0]


def test_a_card_hard_linked_into_attachments_is_not_read(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """A file of the Mac hard-linked into Attachments resolves inside it (no `..`, no symlink),
    yet it is never opened: the message goes without the card's contents."""
    relay = make_relay(ARCHETY_ATTACHMENT_WAIT="0")
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    elsewhere = card(tmp_path, "x.vcf", JOHN, folder="Elsewhere")
    linked = tmp_path / "Messages" / "Attachments" / "0c" / "y.vcf"
    linked.parent.mkdir(parents=True, exist_ok=True)
    os.link(elsewhere.filename, linked)
    writer.message(
        None,
        sender=ALICE,
        chat=chat,
        guid="C5",
        attachments=[replace(elsewhere, filename=str(linked))],
    )
    got = posted(relay, backend)["C5"]
    assert got["kind"] == "contact" and "contact" not in got["attachments"][0]
