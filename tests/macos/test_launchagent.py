"""The LaunchAgent starts and stays up (issue #12.8, review #13).

launchctl is a fake first on PATH that behaves as launchd does: bootout returns before the old
job is gone, a bootstrap in that window fails with 5, a session without a GUI login gives 125.
The install procedure runs against it through the platform switch (`platform="darwin"`).
"""

from __future__ import annotations

import functools
import json
import os
import plistlib
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, write_env_file

from archety_relay import macos
from archety_relay.macos import launchctl, launchd

FAKE_LAUNCHCTL = '''#!{python}
"""Stands in for launchctl: one job, its state in a JSON file, launchd's timing quirks."""
import json, os, sys
path = os.environ["FAKE_LAUNCHCTL_STATE"]
state = json.load(open(path))
state["calls"].append(sys.argv[1:])
verb = sys.argv[1]
code, out = 0, ""
if verb == "bootout":
    if state["loaded"]:
        state["loaded"] = False
        state["lingering"] = state["teardown_polls"]  # bootout returns before teardown ends
    else:
        code, out = 113, "Could not find service"
elif verb == "print" and sys.argv[2].count("/") == 1:  # the gui/<uid> domain itself
    if state["mode"] in ("no_gui_5", "no_gui_112"):
        code, out = 113, "Could not find domain for port identifier"
elif verb == "print":
    if state["loaded"] or state["lingering"] > 0:
        if not state["loaded"]:
            state["lingering"] -= 1
        running = state["loaded"] and state["mode"] != "crashes"
        out = ("state = running\\n\\tpid = 4242\\n" if running else
               "state = waiting\\n\\tlast exit code = 78: EX_CONFIG\\n")
    else:
        code, out = 113, "Could not find service"
elif verb == "bootstrap":
    if state["mode"] == "no_gui":
        code, out = 125, "Bootstrap failed: 125: Domain does not support specified action"
    elif state["mode"] == "no_gui_5":
        code, out = 5, "Bootstrap failed: 5: Input/output error"
    elif state["mode"] == "no_gui_112":
        code, out = 112, "Bootstrap failed: 112: Could not find specified domain"
    elif state["lingering"] > 0 or state["bootstrap_failures"]:
        if state["bootstrap_failures"]:
            state["bootstrap_failures"].pop()
        code, out = 5, "Bootstrap failed: 5: Input/output error"
    else:
        state["loaded"] = True
        state["plist"] = open(sys.argv[3], "rb").read().decode()
json.dump(state, open(path, "w"))
print(out)
sys.exit(code)
'''


class FakeLaunchctl:
    def __init__(self, directory: Path, **state: Any) -> None:
        directory.mkdir()
        tool = directory / "launchctl"
        tool.write_text(FAKE_LAUNCHCTL.replace("{python}", sys.executable))
        tool.chmod(0o755)
        self.state_file = directory / "state.json"
        initial = {
            "calls": [],
            "loaded": False,
            "lingering": 0,
            "teardown_polls": 0,
            "bootstrap_failures": [],
            "mode": "ok",
        }
        self.state_file.write_text(json.dumps({**initial, **state}))
        self.path = str(directory)

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_file.read_text()))

    def verbs(self) -> list[str]:
        return [call[0] for call in self.state()["calls"]]


@pytest.fixture
def fake_launchctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(**state: Any) -> FakeLaunchctl:
        fake = FakeLaunchctl(tmp_path / "launchctlbin", **state)
        monkeypatch.setenv("PATH", f"{fake.path}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_LAUNCHCTL_STATE", str(fake.state_file))
        return fake

    return make


def _install(tmp_path: Path, **kwargs: Any) -> launchctl.Installed:
    return launchctl.install(
        501,
        tmp_path / "LaunchAgents" / "com.archety.relay.plist",
        b"<plist/>",
        runner=functools.partial(macos.run, platform="darwin"),
        sleep=lambda seconds: None,
        **kwargs,
    )


def test_reinstall_waits_for_the_old_job_then_retries_bootstrap(
    fake_launchctl: Any, tmp_path: Path
) -> None:
    """Over a running job that takes a while to go: enable, bootout, wait until `print` fails,
    bootstrap (retried after a 5), then the new pid is confirmed; no kickstart -k kills it."""
    fake = fake_launchctl(loaded=True, teardown_polls=3, bootstrap_failures=[5])
    installed = _install(tmp_path)
    assert installed == launchctl.Installed(pid=4242, bootstrap_attempts=2)
    verbs = fake.verbs()
    assert verbs[:2] == ["enable", "bootout"]
    assert verbs.count("print") >= 4 and "kickstart" not in verbs
    assert verbs.count("bootstrap") == 2
    assert fake.state()["plist"] == "<plist/>"


def test_no_gui_login_explains_error_125(fake_launchctl: Any, tmp_path: Path) -> None:
    """Over SSH with nobody logged in on the screen: a failure that says what 125 means and
    what to do (log in, auto-login), not launchctl's bare words."""
    fake_launchctl(mode="no_gui")
    with pytest.raises(launchctl.InstallFailed) as failed:
        _install(tmp_path)
    assert "125" in str(failed.value) and "auto-login" in failed.value.hint


def test_a_job_that_loads_but_never_runs_is_reported(fake_launchctl: Any, tmp_path: Path) -> None:
    """Bootstrap succeeds but no pid appears: the install fails with launchd's state and last
    exit code instead of a cheerful "started"."""
    fake_launchctl(mode="crashes")
    with pytest.raises(launchctl.InstallFailed) as failed:
        _install(tmp_path)
    assert "state waiting" in str(failed.value) and "78" in str(failed.value)


def test_the_plist_carries_what_the_shell_reads_never_the_secret(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The agent runs in the state directory: the plist names the .env this shell reads by its
    absolute path and carries every ARCHETY_* set here, never the secret; Interactive, Aqua."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".env").write_text("EDGE_AGENT_ID=from-dotenv\n")
    result = run_cli(
        ["install-service", "--dry-run"],
        {**env, "ARCHETY_SEND_RATE_PER_CHAT": "2", "ARCHETY_POLL_INTERVAL": "0.25"},
        cwd=repo,
    )
    assert result.returncode == 0, result.stderr
    xml = "\n".join(ln for ln in result.stdout.splitlines() if not ln.startswith(("#", "$")))
    plist = plistlib.loads(xml.encode())
    agent_env = plist["EnvironmentVariables"]
    assert agent_env["ARCHETY_ENV_FILE"] == str(repo / ".env")
    assert agent_env["ARCHETY_SEND_RATE_PER_CHAT"] == "2"
    assert agent_env["ARCHETY_POLL_INTERVAL"] == "0.25"
    assert agent_env["ARCHETY_CHAT_DB"] == env["ARCHETY_CHAT_DB"]
    assert not any("SECRET" in key for key in agent_env)
    assert env["RELAY_WEBHOOK_SECRET"] not in result.stdout
    assert plist["ProcessType"] == "Interactive"
    assert plist["LimitLoadToSessionType"] == "Aqua"
    assert "kickstart" not in result.stdout
    assert launchd.pid_of("\tpid = 77\n") == 77


def test_doctor_resolves_the_settings_as_the_agent_will(
    env: dict[str, str], tmp_path: Path
) -> None:
    """An agent installed without this shell's backend URL (the review #13 case: the .env beside
    the code is invisible from the state dir) is a ✗ naming what it would use; one installed
    from this shell is ✓."""
    target = launchd.agent_path(Path(env["HOME"]))
    target.parent.mkdir(parents=True)
    state, logs = Path(env["ARCHETY_STATE_DIR"]), Path(env["ARCHETY_LOG_FILE"]).parent
    partial = {k: v for k, v in env.items() if k in ("ARCHETY_CHAT_DB", "ARCHETY_STATE_DIR")}
    target.write_bytes(launchd.render(launchd.agent_plist(sys.executable, state, logs, partial)))
    result = run_cli(["doctor"], env, cwd=tmp_path)
    line = next(ln for ln in result.stdout.splitlines() if "agent settings" in ln)
    assert (
        line.startswith("✗")
        and "archety-backend-prod" in line
        and env["ARCHETY_BACKEND_URL"] in line
    )
    assert "install-service" in result.stdout
    full = {k: v for k, v in env.items() if k.startswith(("ARCHETY_", "EDGE_"))}
    target.write_bytes(launchd.render(launchd.agent_plist(sys.executable, state, logs, full)))
    again = run_cli(["doctor"], env, cwd=tmp_path)
    line = next(ln for ln in again.stdout.splitlines() if "agent settings" in ln)
    assert line.startswith("✗") and "secret comes from the environment" in line
    env_file = write_env_file(tmp_path / "private.env", env["RELAY_WEBHOOK_SECRET"])
    shell = {**{k: v for k, v in env.items() if k != "RELAY_WEBHOOK_SECRET"}}
    shell["ARCHETY_ENV_FILE"] = str(env_file)
    carried = {k: v for k, v in shell.items() if k.startswith(("ARCHETY_", "EDGE_"))}
    target.write_bytes(launchd.render(launchd.agent_plist(sys.executable, state, logs, carried)))
    fine = run_cli(["doctor"], shell, cwd=tmp_path)
    line = next(ln for ln in fine.stdout.splitlines() if "agent settings" in ln)
    assert line.startswith("✓") and str(env_file) in line


@pytest.mark.parametrize(("mode", "attempts"), [("no_gui_5", 3), ("no_gui_112", 1)])
def test_bootstrap_failing_with_no_gui_session_says_log_in_first(
    fake_launchctl: Any, tmp_path: Path, mode: str, attempts: int
) -> None:
    """Over SSH with nobody logged in, bootstrap can fail with 5 (after its retries) or 112
    rather than 125 (psimaker/vaultsync#89): `launchctl print gui/<uid>` failing as well means
    there is no GUI login session, and the error says to log in on the Mac first."""
    fake = fake_launchctl(mode=mode)
    with pytest.raises(launchctl.InstallFailed) as failed:
        _install(tmp_path)
    assert failed.value.hint.startswith("no GUI login session: log in on the Mac (auto-login)")
    assert fake.verbs().count("bootstrap") == attempts
    assert ["print", "gui/501"] in fake.state()["calls"]


def test_a_5_with_a_gui_session_is_not_blamed_on_the_login(
    fake_launchctl: Any, tmp_path: Path
) -> None:
    """Bootstrap keeps failing with 5 while `launchctl print gui/<uid>` works: not the login."""
    fake_launchctl(bootstrap_failures=[5, 5, 5])
    with pytest.raises(launchctl.InstallFailed) as failed:
        _install(tmp_path)
    assert "GUI" not in failed.value.hint and "3 attempt" in str(failed.value)
