"""A send step that keeps failing is logged once a minute and once when it recovers.

While chat.db cannot be read (Full Disk Access revoked, the file moved during a migration) every
due reply's step fails. Each chat was due again one pacing gap later, and each failure wrote a
full traceback: 427 lines and 642 KB in 30 s for 5 replies, ~1.8 GB a day, so the rotated logs
turned over in under an hour (review 2026-12-04, #10). The dispatcher is driven here with chosen
times, as the daemon's loop drives it.
"""

from __future__ import annotations

from pathlib import Path

import structlog.testing
from conftest import FakeOsascript

from archety_relay.backend.commands import SendNow
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.relay import Relay

PEOPLE = [f"+1555555{n:04d}" for n in range(300, 305)]


def test_chatdb_unreadable_while_replies_are_due_logs_one_line_a_minute_then_recovered(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript
) -> None:
    """Five replies due, chat.db moved away; the dispatcher stepped every 0.33 s for 40 s:
    one `send_step_failed` line (no traceback: the error says what is wrong), not one per chat
    per step. chat.db back: one `send_step_failed_recovered` line and all five replies sent."""
    for n, person in enumerate(PEOPLE):
        writer.direct_chat(person)
        relay.outbound.execute(SendNow(f"s{n}", f"iMessage;-;{person}", f"reply {n}"), 100.0)
    away = Path(f"{writer.path}.away")
    writer.path.rename(away)
    with structlog.testing.capture_logs() as logs:
        for step in range(120):
            relay.outbound.dispatch_step(100.0 + step / 3)
        failed = [e for e in logs if e["event"] == "send_step_failed"]
        assert len(failed) == 1
        assert "exc_info" not in failed[0]
        assert osascript.sent() == []

        away.rename(writer.path)
        for step in range(60):
            relay.outbound.dispatch_step(140.0 + step)
    recovered = [e for e in logs if e["event"] == "send_step_failed_recovered"]
    assert len(recovered) == 1
    assert sorted(text for _, text in osascript.sent()) == [f"reply {n}" for n in range(5)]
