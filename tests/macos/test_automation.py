"""No unanswered Automation prompt (issue #22).

The daemon looks at the Automation state quietly (AEDeterminePermissionToAutomateTarget without
a prompt; a stand-in answers here with the OSStatus a Mac would give), holds sends while it is
not allowed, and raises the real prompt only when `automation-check` asks, run by someone
watching the screen. osascript is the fake first on PATH (see conftest); its probe answers ok,
-1743 or hangs as a prompt nobody answers does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, FakeOsascript, RelayProcess, run_cli

from archety_relay.backend.commands import SendNow
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.macos import automation
from archety_relay.relay import Relay
from archety_relay.tools import doctor

NOT_ANSWERED, DENIED, ALLOWED, NOT_RUNNING = -1744, -1743, 0, -600


def _quiet(relay: Relay, answers: list[int | None]) -> list[int | None]:
    """The quiet look answers from this list, in turn; returns the list of answers given."""
    given: list[int | None] = []

    def look() -> int | None:
        given.append(answers.pop(0))
        return given[-1]

    relay.outbound.permission.quiet = look
    return given


def test_sends_wait_unsent_while_nobody_has_allowed_automation(
    relay: Relay, osascript: FakeOsascript, writer: MessagesWriter
) -> None:
    """Not answered yet (-1744) or denied (-1743): no osascript runs at all (any Apple event to
    Messages would raise the prompt with nobody at the screen), the reply stays queued, doctor
    says how to fix it; looked at again only every few minutes; once allowed it is sent."""
    writer.direct_chat(ALICE)
    looks = _quiet(relay, [NOT_ANSWERED, DENIED, ALLOWED])
    relay.outbound.execute(SendNow("a1", f"iMessage;-;{ALICE}", "hi"), 1000.0)
    assert relay.outbound.automation_step(1000.0) == automation.NOT_ALLOWED
    assert relay.outbound.dispatch_step(1000.0) is None
    assert osascript.all_calls() == []
    assert relay.store.outgoing_counts() == {"pending": 1}
    check = doctor.automation_check(relay.settings, platform="darwin")
    assert not check.ok and "automation-check" in check.fix
    assert "tccutil reset AppleEvents com.archety.relay" in check.fix
    assert relay.outbound.automation_step(1100.0) is None and len(looks) == 1
    assert relay.outbound.automation_step(1300.0) == automation.NOT_ALLOWED  # -1743: the same
    assert relay.outbound.automation_step(1600.0) == automation.ALLOWED
    relay.outbound.dispatch_step(1600.0)
    assert osascript.sent() == [(f"iMessage;-;{ALICE}", "hi")]
    assert relay.store.outgoing_counts() == {"sent": 1}
    assert automation.read(relay.settings.state_dir)["by"] == "quiet_probe"  # type: ignore[index]


def test_a_refused_send_is_kept_and_a_confirmed_one_proves_automation_allowed(
    relay: Relay, osascript: FakeOsascript, writer: MessagesWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No quiet answer (off macOS): sends go. Messages refuses one with -1743: it is not failed
    but kept, and sends hold; after the operator's check it goes, and the send Messages
    recorded is what doctor then shows as the proof."""
    writer.direct_chat(ALICE)
    _quiet(relay, [None, NOT_ANSWERED])
    assert relay.outbound.automation_step(1000.0) == automation.UNKNOWN
    monkeypatch.setenv("FAKE_OSASCRIPT_FAIL", "execution error: Not authorized (-1743)")
    relay.outbound.execute(SendNow("a1", f"iMessage;-;{ALICE}", "hi"), 1000.0)
    relay.outbound.dispatch_step(1000.0)
    assert relay.store.outgoing_counts() == {"pending": 1}
    assert relay.outbound.permission.held
    monkeypatch.delenv("FAKE_OSASCRIPT_FAIL")
    relay.outbound.dispatch_step(1001.0)
    assert len(osascript.calls()) == 1  # held: not tried again
    automation.request(relay.settings.state_dir, 1002.0, 5.0)
    assert relay.outbound.automation_step(1002.0) == automation.ALLOWED
    assert osascript.probes()  # the prompting check ran, because it was asked for
    relay.outbound.dispatch_step(1003.0)
    assert relay.store.outgoing_counts() == {"sent": 1}
    assert doctor.automation_check(relay.settings, platform="darwin").ok


def test_messages_not_running_is_started_hidden_before_anything_is_sent(relay: Relay) -> None:
    """-600 says nothing: Messages is started hidden (`open -g -j`, no Apple event of ours),
    sends wait, and the state is looked at again 10 s later."""
    launched: list[Any] = []
    relay.outbound.permission.launch = lambda: launched.append(1)
    _quiet(relay, [NOT_RUNNING, ALLOWED])
    assert relay.outbound.automation_step(1000.0) is None
    assert launched == [1] and relay.outbound.permission.held
    assert relay.outbound.automation_step(1005.0) is None
    assert relay.outbound.automation_step(1010.0) == automation.ALLOWED
    assert not relay.outbound.permission.held


@pytest.fixture
def daemon(
    start_relay: Any, osascript: FakeOsascript, writer: MessagesWriter, tmp_path: Path
) -> tuple[RelayProcess, Path]:
    mode = tmp_path / "probe-mode"
    mode.write_text("ok")
    relay = start_relay({**osascript.env, "FAKE_OSASCRIPT_PROBE_FILE": str(mode)})
    return relay, mode


def test_automation_check_asks_the_running_relay_while_someone_watches(
    daemon: tuple[RelayProcess, Path], env: dict[str, str], tmp_path: Path
) -> None:
    """automation-check tells the operator to watch the screen, and the running relay (the
    identity that needs the grant) sends the prompting event: allowed → exit 0; -1743 → exit 1
    with the tccutil reset; a prompt nobody answers → killed after --wait, exit 1."""
    relay, mode = daemon
    ok = run_cli(["automation-check", "--wait", "5"], env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Watch the Mac's screen" in ok.stdout and "by the relay (pid" in ok.stdout
    mode.write_text("denied")
    denied = run_cli(["automation-check", "--wait", "5"], env, cwd=tmp_path)
    assert denied.returncode == 1 and "-1743" in denied.stdout
    assert "tccutil reset AppleEvents" in denied.stdout
    mode.write_text("hang")
    started = time.monotonic()
    hung = run_cli(["automation-check", "--wait", "1"], env, cwd=tmp_path)
    assert hung.returncode == 1 and "nobody answered within 1 s" in hung.stdout, hung.stdout
    assert time.monotonic() - started < 40  # the hung check was killed, not waited out
    assert relay.proc.poll() is None


def test_automation_check_without_a_relay_says_whose_grant_it_tested(
    env: dict[str, str], osascript: FakeOsascript, tmp_path: Path
) -> None:
    """No relay running: it asks from this shell and says that this is not the relay's grant."""
    result = run_cli(["automation-check", "--wait", "5"], {**env, **osascript.env}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOT the relay" in result.stdout
