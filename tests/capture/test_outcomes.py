"""What became of the persona's messages after they were sent (issue #20): `message_delivered`
when Messages marks a sent row delivered, `message_not_delivered` when a row confirmed sent gets a
non-zero `error` later; once each, across restarts, read by date from a day of sends.

Rows are changed the way Messages changes them (`is_delivered` + `date_delivered` on a receipt,
`error` on a late failure); the assertions are on the events the loopback backend got in
`/edge/sync`.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import ALICE, relay_life

from archety_relay.capture import outcomes
from archety_relay.config import Settings
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay

UNDELIVERED = {"is_delivered": 0, "date_delivered": 0}


def look(relay: Relay, now: float | None = None) -> None:
    """What the capture thread does each time chat.db changes."""
    now = time.time() if now is None else now
    relay.capture_step(now)
    relay.changes_step(now)


def synced(relay: Relay, backend: StubBackend, *types: str) -> list[dict[str, Any]]:
    relay.sync_step(time.time())
    return [e for e in backend.sync_events() if e["event_type"] in types]


def sent_row(writer: MessagesWriter, chat: int, text: str = "on my way") -> int:
    """A persona message as Messages writes it once sent: is_from_me, is_sent, not delivered."""
    return writer.message(text, sender=None, chat=chat, is_from_me=1, columns=UNDELIVERED)


def test_a_receipt_is_one_message_delivered_event(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Sent, then delivered: one `message_delivered` with the chat and when; looking again (and
    a read receipt on top) reports no second one."""
    chat = writer.direct_chat(ALICE)
    look(relay)
    rowid = sent_row(writer, chat)
    look(relay)
    assert synced(relay, backend, "message_delivered") == []
    delivered_at = time.time() - 5
    writer.mark_delivered(rowid, at=delivered_at)
    look(relay)
    look(relay)
    writer.mark_read(rowid)
    look(relay)
    [event] = synced(relay, backend, "message_delivered")
    assert event["message_guid"] == writer.guid_of(rowid)
    assert event["chat_guid"] == f"iMessage;-;{ALICE}"
    assert event["details"]["delivered_at"].startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(delivered_at))
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [(22, "recipient_unregistered"), (3, "network_error"), (42, "error_42")],
)
def test_a_late_error_is_one_message_not_delivered_event(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, code: int, reason: str
) -> None:
    """A row seen sent with error 0, then given `error` minutes later: one
    `message_not_delivered` naming the code and what it means."""
    chat = writer.direct_chat(ALICE)
    look(relay)
    rowid = sent_row(writer, chat)
    look(relay)
    writer.mark_failed(rowid, code)
    look(relay)
    look(relay)
    [event] = synced(relay, backend, "message_not_delivered")
    assert event["message_guid"] == writer.guid_of(rowid)
    assert event["details"] == {"error_code": code, "reason": reason}
    assert synced(relay, backend, "message_delivered") == []


def test_each_outcome_once_across_a_restart(
    settings: Settings, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Seen sent by one life of the relay, delivered while it was down: the next life reports
    it once, and a third life reports nothing again."""
    chat = writer.direct_chat(ALICE)
    relay_life(settings, look)
    rowid = sent_row(writer, chat)
    relay_life(settings, look)
    writer.mark_delivered(rowid)
    for _ in range(2):
        relay_life(settings, lambda r: (look(r), r.sync_step(time.time())))
    events = [e for e in backend.sync_events() if e["event_type"] == "message_delivered"]
    assert len({e["message_guid"] for e in events}) == 1


def test_history_and_rows_failing_at_once_are_recorded_without_events(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Rows already delivered before the watch first ran are history; a row that fails before
    it was ever seen sent was never confirmed (the send path reports that): no events."""
    chat = writer.direct_chat(ALICE)
    old = sent_row(writer, chat, "from last week's run")
    writer.mark_delivered(old)
    look(relay)
    failing = writer.message(
        "never went", sender=None, chat=chat, is_from_me=1, columns={**UNDELIVERED, "error": 22}
    )
    look(relay)
    assert failing
    assert synced(relay, backend, "message_delivered", "message_not_delivered") == []


def test_rows_older_than_a_day_are_not_watched(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The watch reads a day of sends by date: a row sent 25 hours ago and delivered now is
    outside it (its receipt is not worth reading chat.db further back for)."""
    chat = writer.direct_chat(ALICE)
    look(relay, time.time() - 26 * 3600)  # the watch began before it was sent
    rowid = writer.message(
        "yesterday",
        sender=None,
        chat=chat,
        is_from_me=1,
        sent_at=time.time() - 25 * 3600,
        columns=UNDELIVERED,
    )
    writer.mark_delivered(rowid)
    look(relay)
    assert synced(relay, backend, "message_delivered") == []
    assert outcomes.WINDOW_SECONDS == 24 * 3600
