"""The operator's view of iMessage's health (issue #20): `status` lists the alerts and what
became of the persona's messages of the last day, `doctor --live` adds Messages.app, the alerts,
the day's outcomes and the daemon's /healthz; the demo prints where its metrics are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from conftest import ALICE, run_cli

from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.relay import Relay


def _a_troubled_day(make_relay: Callable[..., Relay], writer: MessagesWriter) -> Relay:
    """Two persona messages: one delivered, one failing later with error 22; and hours of
    silence past ARCHETY_SILENCE_ALERT."""
    relay = make_relay(ARCHETY_SILENCE_ALERT="1h")
    chat = writer.direct_chat(ALICE)
    now = time.time()
    relay.changes_step(now)
    undelivered = {"is_delivered": 0, "date_delivered": 0}
    ok = writer.message("see you", sender=None, chat=chat, is_from_me=1, columns=undelivered)
    bad = writer.message("you there?", sender=None, chat=chat, is_from_me=1, columns=undelivered)
    relay.changes_step(now)
    writer.mark_delivered(ok)
    writer.mark_failed(bad, 22)
    relay.changes_step(now)
    relay.health_step(now + 2 * 3600)
    return relay


def test_status_shows_alerts_and_the_days_outcomes(
    make_relay: Callable[..., Relay], writer: MessagesWriter, env: dict[str, str], tmp_path: Path
) -> None:
    """`status --json` carries the raised alerts and the last day's delivered / not delivered
    counts by reason; the text form says the same in two lines, and where /metrics is."""
    _a_troubled_day(make_relay, writer)
    report = json.loads(run_cli(["status", "--json"], env, cwd=tmp_path).stdout)
    assert [a["kind"] for a in report["alerts"]] == ["inbound_silence"]
    assert report["delivery_outcomes_24h"] == {
        "delivered": 1,
        "pending": 0,
        "not_delivered": 1,
        "not_delivered_by_reason": {"recipient_unregistered": 1},
    }
    text = run_cli(["status"], env, cwd=tmp_path).stdout
    assert "alerts        : 1\n  - inbound_silence since " in text
    assert (
        "sent, last 24h: 1 delivered, 0 without a receipt yet, 1 not delivered "
        "(1 recipient_unregistered)" in text
    )
    assert "metrics       : off (ARCHETY_METRICS_PORT=0)" in text


def test_doctor_live_names_the_alerts_outcomes_and_healthz(
    make_relay: Callable[..., Relay], writer: MessagesWriter, env: dict[str, str], tmp_path: Path
) -> None:
    """`doctor --live --wait 0` (no daemon running, metrics on their default port here): the
    alert, the day's outcomes, that /healthz does not answer, and Messages skipped off macOS."""
    _a_troubled_day(make_relay, writer)
    live_env = {**env, "ARCHETY_METRICS_PORT": "1"}  # nothing listens on port 1
    result = run_cli(["doctor", "--live", "--wait", "0"], live_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "messages    : not macOS" in result.stdout
    assert "alerts      : inbound_silence since " in result.stdout
    assert (
        "sent 24h    : 1 delivered, 0 no receipt yet, 1 not delivered (1 recipient_unregistered)"
        in result.stdout
    )
    assert "healthz     : no answer at http://127.0.0.1:1/healthz" in result.stdout
