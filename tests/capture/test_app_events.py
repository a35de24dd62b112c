"""Rows that are not messages but still something a person did — a vote in a poll, starting or
stopping location sharing, a FaceTime/SharePlay call — reach the backend as sync events, not
as empty messages and not silently dropped. Rows are written the way Messages writes them."""

from __future__ import annotations

import time
from typing import Any

from conftest import ALICE, BOB, posted

from archety_relay.chatdb import balloons
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay

POLLS = "com.apple.messages.MSMessageExtensionBalloonPlugin:0000000000:com.apple.messages.Polls"


def synced(relay: Relay, backend: StubBackend) -> list[dict[str, Any]]:
    posted(relay, backend)
    relay.sync_step(time.time())
    return backend.sync_events()


def test_a_vote_is_a_poll_voted_event_with_the_options_text(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Bob votes in Alice's poll (a row with associated_message_type 4000 naming the poll):
    `poll_voted` {poll_message_guid, option, sender}, the option's text read from the poll."""
    chat = writer.group_chat("chat9", [ALICE, BOB])
    relay.capture_step(time.time())
    poll = balloons.poll_payload(
        {
            "item": {
                "title": "Dinner?",
                "orderedPollOptions": [
                    {"optionIdentifier": "opt-a", "text": "Pizza"},
                    {"optionIdentifier": "opt-b", "text": "Sushi"},
                ],
            }
        }
    )
    writer.message(
        None,
        sender=ALICE,
        chat=chat,
        guid="POLL-1",
        attributed_body=b"",
        columns={"balloon_bundle_id": POLLS, "payload_data": poll},
    )
    vote = balloons.poll_payload(
        {"votes": [{"voteOptionIdentifier": "opt-b", "participantHandle": BOB}]}
    )
    writer.message(
        None,
        sender=BOB,
        chat=chat,
        guid="VOTE-1",
        attributed_body=b"",
        associated_message_type=4000,
        columns={
            "balloon_bundle_id": POLLS,
            "payload_data": vote,
            "associated_message_guid": "p:0/POLL-1",
        },
    )
    events = synced(relay, backend)
    assert [m.body["message_guid"] for m in backend.messages()] == ["POLL-1"]
    (voted,) = [e for e in events if e["event_type"] == "poll_voted"]
    assert voted["message_guid"] == "POLL-1"
    assert voted["chat_guid"] == "iMessage;+;chat9"
    details = voted["details"]
    assert (details["poll_message_guid"], details["option"], details["sender"]) == (
        "POLL-1",
        "Sushi",
        BOB,
    )
    assert details["question"] == "Dinner?"


def test_location_sharing_started_and_stopped_are_events(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """item_type 4: `share_status` 0 is `location_shared`, 1 `location_stopped`."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message(
        None,
        sender=ALICE,
        chat=chat,
        guid="SH-1",
        item_type=4,
        columns={"share_status": 0, "share_direction": 0},
    )
    writer.message(
        None,
        sender=ALICE,
        chat=chat,
        guid="SH-2",
        item_type=4,
        columns={"share_status": 1, "share_direction": 0},
    )
    events = synced(relay, backend)
    got = [(e["event_type"], e["message_guid"], e["details"]["sender"]) for e in events]
    assert got == [("location_shared", "SH-1", ALICE), ("location_stopped", "SH-2", ALICE)]
    assert backend.messages() == []


def test_a_facetime_or_shareplay_row_is_an_event(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """item_type 6 (FaceTime / SharePlay): a `shareplay` event naming who started it."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message(None, sender=ALICE, chat=chat, guid="FT-1", item_type=6)
    events = synced(relay, backend)
    assert [(e["event_type"], e["details"]["sender"]) for e in events] == [("shareplay", ALICE)]
