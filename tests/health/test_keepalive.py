"""Messages.app kept alive (issue #20), through the macOS seams with fake `pgrep`, `open`,
`pkill` and `osascript` first on PATH: relaunched in the background when it is not running,
restarted after two osascript timeouts in a row but never more than once in 10 minutes, and an
alert while the iMessage account is signed out. Each alert is an `alert` / `alert_cleared`
event in `/edge/sync` and a 503 from /healthz while it lasts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from archety_relay.demo.stub_backend import StubBackend
from archety_relay.health import keepalive
from archety_relay.health.checks import healthz
from archety_relay.macos import automation, messages_app
from archety_relay.macos.messages_app import SendResult
from archety_relay.relay import Relay

FAKE_TOOL = """#!{python}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
name = os.path.basename(sys.argv[0])
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
running = os.path.join(here, "running")
if name == "pgrep":
    sys.exit(0 if os.path.exists(running) else 1)
if name == "open":
    open(running, "w").close()
    sys.exit(0)
if name == "pkill":
    sys.exit(0)
script = " ".join(sys.argv[1:])
if "to quit" in script:
    if os.path.exists(running):
        os.remove(running)
    sys.exit(0)
if "connection status" in script:
    account = os.path.join(here, "account")
    if not os.path.exists(account):
        print("execution error: Can't get account 1 whose service type = iMessage. (-1728)",
              file=sys.stderr)
        sys.exit(1)
    print(open(account).read().strip())
    sys.exit(0)
time.sleep(float(os.environ.get("FAKE_OSASCRIPT_SLEEP", "0")))
"""


class FakeMac:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        for name in ("pgrep", "open", "pkill", "osascript"):
            tool = directory / name
            tool.write_text(FAKE_TOOL.replace("{python}", sys.executable))
            tool.chmod(0o755)

    def messages_running(self, running: bool) -> None:
        path = self.dir / "running"
        if running:
            path.touch()
        elif path.exists():
            path.unlink()

    def account(self, answer: str | None) -> None:
        path = self.dir / "account"
        if answer is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(answer)

    def calls(self) -> list[list[str]]:
        log = self.dir / "calls.jsonl"
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    def restarts(self) -> int:
        return sum(1 for c in self.calls() if c[0] == "osascript" and "quit" in " ".join(c))


@pytest.fixture
def mac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relay: Relay) -> FakeMac:
    fake = FakeMac(tmp_path / "fakemac")
    monkeypatch.setenv("PATH", f"{fake.dir}{os.pathsep}{os.environ['PATH']}")
    relay.keeper.platform = "darwin"
    relay.outbound.permission.state = automation.ALLOWED  # as a confirmed send records it
    fake.messages_running(True)
    fake.account("true,connected")
    return fake


def alerts(backend: StubBackend, relay: Relay) -> list[tuple[str, str]]:
    relay.sync_step(time.time())
    return [
        (e["event_type"], e["details"]["kind"])
        for e in backend.sync_events()
        if e["event_type"] in ("alert", "alert_cleared")
    ]


TIMEOUT = SendResult(False, "osascript did not finish within 30s")


def test_messages_not_running_is_launched_in_the_background_and_reported(
    relay: Relay, mac: FakeMac, backend: StubBackend
) -> None:
    """Messages quit: the next look starts it with `open -g -j` (no focus taken), raises
    `messages_not_running` (503 meanwhile), and the look after clears it."""
    mac.messages_running(False)
    now = time.time()
    relay.health_step(now)
    assert ["open", "-g", "-j", "-b", "com.apple.MobileSMS"] in mac.calls()
    assert healthz(relay.health_snapshot(now))[0] == 503
    relay.health_step(now + 30)
    assert healthz(relay.health_snapshot(now + 30))[0] == 200
    assert alerts(backend, relay) == [
        ("alert", "messages_not_running"),
        ("alert_cleared", "messages_not_running"),
    ]


@pytest.mark.parametrize(
    ("answer", "signed_out"),
    [
        ("false,connected", True),
        ("true,disconnected", True),
        (None, True),
        ("true,connected", False),
    ],
)
def test_the_imessage_account_signed_out_is_an_alert(
    relay: Relay, mac: FakeMac, backend: StubBackend, answer: str | None, signed_out: bool
) -> None:
    """The scripting dictionary's iMessage account disabled, disconnected or missing raises
    `imessage_signed_out` (503); signed in again clears it."""
    mac.account(answer)
    now = time.time()
    relay.health_step(now)
    assert (healthz(relay.health_snapshot(now))[0] == 503) is signed_out
    mac.account("true,connected")
    relay.health_step(now + 30)
    expected = [("alert", "imessage_signed_out"), ("alert_cleared", "imessage_signed_out")]
    assert alerts(backend, relay) == (expected if signed_out else [])


def test_two_send_timeouts_restart_messages_at_most_once_in_ten_minutes(
    relay: Relay, mac: FakeMac, backend: StubBackend
) -> None:
    """Two timeouts in a row: Messages quit and reopened once, `messages_unresponsive` raised.
    Two more within 10 minutes: no second restart. A timeout, a good send, a timeout: no
    restart. Two more after 10 minutes: the second restart. A good send clears the alert."""
    keeper, t = relay.keeper, 1_000_000.0
    keeper.observe_send(TIMEOUT, t)
    assert mac.restarts() == 0
    keeper.observe_send(TIMEOUT, t + 31)
    assert mac.restarts() == 1 and ["open", "-g", "-j", "-b", "com.apple.MobileSMS"] in mac.calls()
    for step in range(2, 8):
        keeper.observe_send(TIMEOUT, t + 31 * step)
    assert mac.restarts() == 1
    keeper.observe_send(SendResult(True), t + 400)
    keeper.observe_send(TIMEOUT, t + 610)
    keeper.observe_send(SendResult(True), t + 620)
    keeper.observe_send(TIMEOUT, t + 630)
    assert mac.restarts() == 1
    keeper.observe_send(TIMEOUT, t + 640)
    assert mac.restarts() == 2
    assert keepalive.should_restart(2, t + 640, t + 640 + 599) is False
    assert keepalive.should_restart(2, t + 640, t + 640 + 600) is True
    assert [k for k in alerts(backend, relay) if k[1] == "messages_unresponsive"] == [
        ("alert", "messages_unresponsive"),
        ("alert_cleared", "messages_unresponsive"),
        ("alert", "messages_unresponsive"),
    ]


def test_a_send_past_its_deadline_reads_as_a_timeout_to_the_keeper(
    mac: FakeMac, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The words the keeper counts are the ones messages_app really returns when osascript
    outlives its deadline (a fake osascript that sleeps)."""
    monkeypatch.setenv("FAKE_OSASCRIPT_SLEEP", "5")
    result = messages_app.automation_allowed(timeout=0.3)
    assert not result.ok and keepalive.TIMED_OUT in (result.error or "")


def test_the_account_is_not_asked_before_automation_is_known_allowed(
    relay: Relay, mac: FakeMac, backend: StubBackend
) -> None:
    """Reading the account is an Apple event: while Automation is not known to be allowed the
    keeper only runs pgrep (no osascript that could raise the consent prompt unattended)."""
    relay.outbound.permission.state = automation.UNKNOWN
    mac.account(None)
    relay.health_step(time.time())
    assert [c[0] for c in mac.calls()] == ["pgrep"]
    assert alerts(backend, relay) == []


def test_off_macos_the_keeper_calls_nothing(
    relay: Relay, tmp_path: Path, backend: StubBackend
) -> None:
    """On Linux (no `platform` given) the keeper runs no tool and raises nothing."""
    relay.health_step(time.time())
    for _ in range(3):
        relay.keeper.observe_send(TIMEOUT, time.time())
    assert alerts(backend, relay) == []
    assert relay.store.active_alerts() == {}
