"""Inbound silence (issue #20): no incoming message for ARCHETY_SILENCE_ALERT raises one
`alert` {kind: inbound_silence, since}, the next incoming message one `alert_cleared`; 0 turns
it off. /healthz stays 200 (`degraded`): silence is worth a look, not an outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from conftest import ALICE

from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.health.checks import healthz
from archety_relay.model import utc_iso
from archety_relay.relay import Relay


def alert_events(relay: Relay, backend: StubBackend) -> list[dict[str, Any]]:
    relay.sync_step(time.time())
    return [e for e in backend.sync_events() if e["event_type"] in ("alert", "alert_cleared")]


def test_hours_without_an_incoming_message_raise_one_alert_cleared_by_the_next(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """The last message came 7 hours ago (threshold 6h): one alert naming when the silence
    began, however often the relay looks; a message arrives: one alert_cleared."""
    relay = make_relay(ARCHETY_SILENCE_ALERT="6h")
    chat = writer.direct_chat(ALICE)
    last = time.time() - 7 * 3600
    writer.message("good night", sender=ALICE, chat=chat, sent_at=last)
    now = time.time()
    for minute in range(3):
        relay.health_step(now + 60 * minute)
    code, body = healthz(relay.health_snapshot(now))
    assert code == 200 and body["status"] == "degraded"
    writer.message("morning!", sender=ALICE, chat=chat)
    relay.health_step(time.time())
    raised, cleared = alert_events(relay, backend)
    assert raised["event_type"] == "alert"
    assert raised["details"]["kind"] == "inbound_silence"
    assert raised["details"]["since"] == utc_iso(last)
    assert cleared["event_type"] == "alert_cleared"
    assert cleared["details"] == {"kind": "inbound_silence"}
    assert healthz(relay.health_snapshot(time.time()))[1]["status"] == "ok"


def test_a_persona_nobody_ever_wrote_to_counts_from_the_start(
    make_relay: Callable[..., Relay], backend: StubBackend
) -> None:
    """No incoming message in chat.db at all: the silence counts from when the relay started."""
    relay = make_relay(ARCHETY_SILENCE_ALERT="1h")
    relay.health_step(time.time() + 59 * 60)
    assert alert_events(relay, backend) == []
    relay.health_step(time.time() + 61 * 60)
    [event] = alert_events(relay, backend)
    assert event["details"]["kind"] == "inbound_silence"


def test_zero_turns_the_silence_alert_off(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """ARCHETY_SILENCE_ALERT=0: days of silence, no alert."""
    relay = make_relay(ARCHETY_SILENCE_ALERT="0")
    writer.message(
        "long ago", sender=ALICE, chat=writer.direct_chat(ALICE), sent_at=time.time() - 9 * 86400
    )
    relay.health_step(time.time())
    assert alert_events(relay, backend) == []
