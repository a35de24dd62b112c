"""Every message says what kind of thing was sent, and nothing a person sends is dropped for
being of a kind the relay does not know: rows written the way Messages writes them, read
through the real relay, judged by the JSON the backend got."""

from __future__ import annotations

import time

from conftest import ALICE, BOB, no_picture_wait, posted

from archety_relay.chatdb import balloons
from archety_relay.demo.messages_writer import AttachmentSpec, MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay

PLUGIN = "com.apple.messages.MSMessageExtensionBalloonPlugin:0000000000:"


def start(relay: Relay, writer: MessagesWriter) -> int:
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    no_picture_wait(relay)
    return chat


def test_text_and_picture_say_their_kind(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A typed message is `text`; a photo is `picture`, and its attachment entry says so too."""
    chat = start(relay, writer)
    writer.message("hi", sender=ALICE, chat=chat, guid="T")
    photo = AttachmentSpec(
        "~/Library/Messages/Attachments/x/IMG_1.HEIC", "image/heic", uti="public.heic"
    )
    writer.message(None, sender=ALICE, chat=chat, guid="P", attachments=[photo])
    got = posted(relay, backend)
    assert got["T"]["kind"] == "text"
    assert got["P"]["kind"] == "picture"
    assert got["P"]["attachments"][0]["kind"] == "picture"


def test_effects_are_named_and_unknown_ones_pass_through(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """`expressive_send_style_id` becomes `metadata.effect`: slam, invisible ink, balloons,
    shooting star; an id nobody mapped is passed on as it is."""
    chat = start(relay, writer)
    styles = {
        "S": "com.apple.MobileSMS.expressivesend.impact",
        "I": "com.apple.MobileSMS.expressivesend.invisibleink",
        "B": "com.apple.messages.effect.CKHappyBirthdayEffect",
        "Z": "com.apple.messages.effect.CKSparklesEffect",
        "U": "com.apple.messages.effect.CKSomethingNewEffect",
    }
    for guid, style in styles.items():
        writer.message(
            "wow", sender=ALICE, chat=chat, guid=guid, columns={"expressive_send_style_id": style}
        )
    writer.message("plain", sender=ALICE, chat=chat, guid="N")
    got = posted(relay, backend)
    assert {g: got[g]["metadata"].get("effect") for g in [*styles, "N"]} == {
        "S": "slam",
        "I": "invisible_ink",
        "B": "balloons",
        "Z": "shooting_star",
        "U": "com.apple.messages.effect.CKSomethingNewEffect",
        "N": None,
    }


def test_a_sticker_is_a_sticker_and_still_a_picture(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """`attachment.is_sticker = 1`: kind `sticker`, the entry says `is_sticker: true`, and it
    is handled as a picture (`is_photo`), so it is uploaded like any other."""
    chat = start(relay, writer)
    sticker = AttachmentSpec(
        "~/Library/Messages/StickerCache/a/b.heic", "image/heic", uti="public.heic", is_sticker=1
    )
    writer.message(None, sender=ALICE, chat=chat, guid="K", attachments=[sticker])
    (entry,) = posted(relay, backend)["K"]["attachments"]
    assert posted(relay, backend)["K"]["kind"] == "sticker"
    assert (entry["kind"], entry["is_sticker"], entry["is_photo"]) == ("sticker", True, True)


def test_app_balloons_arrive_with_their_kind_even_without_text(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Handwriting, Digital Touch, Apple Cash, Check In and an app nobody mapped (a game) each
    arrive — none is skipped as empty — with the app's bundle id in `metadata.app`."""
    chat = start(relay, writer)
    apps = {
        "H": "com.apple.Handwriting.HandwritingProvider",
        "D": "com.apple.DigitalTouchBalloonProvider",
        "$": PLUGIN + "com.apple.PassbookUIService.PeerPaymentMessagesExtension",
        "C": PLUGIN + "com.apple.SafetyMonitorApp.SafetyMonitorMessages",
        "G": "com.apple.messages.MSMessageExtensionBalloonPlugin:EWFNLB79LQ:com.gamerdelights.gamepigeon.ext",
    }
    for guid, bundle in apps.items():
        writer.message(
            None,
            sender=ALICE,
            chat=chat,
            guid=guid,
            attributed_body=b"",
            columns={"balloon_bundle_id": bundle},
        )
    got = posted(relay, backend)
    assert {g: got[g]["kind"] for g in apps} == {
        "H": "handwriting",
        "D": "digital_touch",
        "$": "payment",
        "C": "app",
        "G": "app",
    }
    assert got["G"]["metadata"]["app"] == "com.gamerdelights.gamepigeon.ext"
    assert got["C"]["metadata"]["app_name"] == "check_in"
    assert all(got[g]["text"] == "" for g in apps)


def test_a_poll_carries_its_question_and_options(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """An iOS 26 poll: kind `poll` with `poll: {question, options}` read from its payload; a poll
    whose payload cannot be read still arrives as a poll, without the field."""
    chat = writer.group_chat("chat1", [ALICE, BOB])
    relay.capture_step(time.time())
    payload = balloons.poll_payload(
        {
            "title": "Dinner?",
            "orderedPollOptions": [
                {"optionIdentifier": "a", "pollOptionText": "Pizza"},
                {"optionIdentifier": "b", "pollOptionText": "Sushi"},
            ],
        }
    )
    bundle = PLUGIN + "com.apple.messages.Polls"
    writer.message(
        None,
        sender=ALICE,
        chat=chat,
        guid="Q",
        attributed_body=b"",
        columns={"balloon_bundle_id": bundle, "payload_data": payload},
    )
    writer.message(
        None,
        sender=BOB,
        chat=chat,
        guid="R",
        attributed_body=b"",
        columns={"balloon_bundle_id": bundle, "payload_data": b"damaged"},
    )
    got = posted(relay, backend)
    assert got["Q"]["kind"] == "poll"
    assert got["Q"]["poll"] == {"question": "Dinner?", "options": ["Pizza", "Sushi"]}
    assert got["R"]["kind"] == "poll" and "poll" not in got["R"]


def test_a_maps_link_is_a_location(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A place shared from Maps arrives as its link: kind `location` with its coordinates and
    name; any other link stays text."""
    chat = start(relay, writer)
    writer.message(
        "https://maps.apple.com/?ll=37.3349,-122.009&q=Apple%20Park",
        sender=ALICE,
        chat=chat,
        guid="L",
    )
    writer.message("https://example.com/?ll=1,2", sender=ALICE, chat=chat, guid="X")
    got = posted(relay, backend)
    assert got["L"]["kind"] == "location"
    assert got["L"]["location"] == {
        "latitude": 37.3349,
        "longitude": -122.009,
        "name": "Apple Park",
    }
    assert got["X"]["kind"] == "text"
