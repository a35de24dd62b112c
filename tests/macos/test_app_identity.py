"""One app identity for the relay: "Archety Relay.app", made at install-service (issue #22).

The bundle is built through the macOS seam with stand-ins first on PATH for Apple's
`codesign`, `plutil` and `xcode-select`; the launcher is compiled by this machine's real `cc`
and run for real: it must spawn (not exec) the Python it is given, pass SIGTERM/SIGHUP on and
exit with the child's status, since macOS attributes the child's grants to it.
"""

from __future__ import annotations

import functools
import json
import os
import plistlib
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until

from archety_relay import macos
from archety_relay.cli import service
from archety_relay.macos import app_bundle, identity, launchd
from archety_relay.tools import doctor

REAL_CC = shutil.which("cc")
needs_cc = pytest.mark.skipif(REAL_CC is None, reason="no C compiler on this machine")

FAKE_TOOL = '''#!{python}
"""Stands in for one of Apple's tools ({name}); every call is logged."""
import hashlib, json, os, plistlib, subprocess, sys
name, args = "{name}", sys.argv[1:]
with open(os.environ["FAKE_APPLE_LOG"], "a") as f:
    f.write(json.dumps([name, *args]) + "\\n")

def seal(app):
    parts = [os.path.join(app, "Contents", "Info.plist")]
    info = plistlib.load(open(parts[0], "rb"))
    parts.append(os.path.join(app, "Contents", "MacOS", info["CFBundleExecutable"]))
    return hashlib.sha256(b"".join(open(p, "rb").read() for p in parts)).hexdigest()

if name == "xcode-select":
    if os.environ.get("FAKE_NO_CLT"):
        sys.stderr.write("xcode-select: error: unable to get active developer directory\\n")
        sys.exit(2)
    print("/Library/Developer/CommandLineTools")
elif name == "plutil":
    plistlib.load(open(args[-1], "rb"))
    print(args[-1] + ": OK")
elif name == "cc":
    os.execv(os.environ["REAL_CC"], [os.environ["REAL_CC"], *args])
elif name == "codesign" and "--verify" in args:
    sig = os.path.join(args[-1], "Contents", "_CodeSignature", "CodeResources")
    if not os.path.exists(sig) or json.load(open(sig))["seal"] != seal(args[-1]):
        sys.stderr.write(args[-1] + ": a sealed resource is missing or invalid\\n")
        sys.exit(1)
elif name == "codesign":
    app = args[-1]
    os.makedirs(os.path.join(app, "Contents", "_CodeSignature"), exist_ok=True)
    ident = args[args.index("--identifier") + 1]
    json.dump({{"identifier": ident, "seal": seal(app)}},
              open(os.path.join(app, "Contents", "_CodeSignature", "CodeResources"), "w"))
'''


class FakeApple:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("xcode-select", "plutil", "cc", "codesign"):
            tool = directory / name
            tool.write_text(FAKE_TOOL.format(python=sys.executable, name=name))
            tool.chmod(0o755)
        self.log = directory / "calls.jsonl"
        self.path = str(directory)

    def calls(self, name: str | None = None) -> list[list[str]]:
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in calls if name is None or c[0] == name]


@pytest.fixture
def apple(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeApple:
    fake = FakeApple(tmp_path / "applebin")
    monkeypatch.setenv("PATH", f"{fake.path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_APPLE_LOG", str(fake.log))
    monkeypatch.setenv("REAL_CC", REAL_CC or "cc")
    return fake


def _build(app: Path) -> app_bundle.Built:
    return app_bundle.build(app, runner=functools.partial(macos.run, platform="darwin"))


@needs_cc
def test_the_bundle_declares_one_identity_that_may_ask_for_automation(
    apple: FakeApple, tmp_path: Path
) -> None:
    """Info.plist carries the bundle id, the Apple-events usage text (without it macOS denies
    without asking) and LSUIElement; it names the executable that was compiled; the bundle is
    linted and ad-hoc signed under the bundle id, without the hardened runtime."""
    app = app_bundle.app_path(tmp_path / "home")
    built = _build(app)
    assert built == app_bundle.Built(app, rebuilt=True, replaced=False)
    assert app.name == "Archety Relay.app" and app.parent.name == "Applications"
    info = plistlib.loads((app / "Contents" / "Info.plist").read_bytes())
    assert info["CFBundleIdentifier"] == "com.archety.relay"
    assert info["CFBundleName"] == "Archety Relay"
    assert "Messages" in info["NSAppleEventsUsageDescription"]
    assert info["LSUIElement"] is True and info["CFBundlePackageType"] == "APPL"
    exe = app / "Contents" / "MacOS" / info["CFBundleExecutable"]
    assert exe == app_bundle.executable(app) and os.access(exe, os.X_OK)
    assert [c[:2] for c in apple.calls("plutil")] == [["plutil", "-lint"]]
    (sign,) = [c for c in apple.calls("codesign") if "--sign" in c]
    assert sign[sign.index("--identifier") + 1] == "com.archety.relay"
    assert sign[-1] == str(app.parent / ".archety-relay-staging" / app.name)
    assert not any("runtime" in arg for arg in sign)
    assert not (app.parent / ".archety-relay-staging").exists()


@needs_cc
def test_the_launcher_spawns_python_as_its_child_and_passes_signals_on(
    apple: FakeApple, tmp_path: Path
) -> None:
    """The app's executable stays the parent of the Python it starts (exec would make the
    process Python.app again); SIGHUP and SIGTERM reach Python; the launcher exits with
    Python's status, and with 128+N when Python is killed by signal N."""
    app = app_bundle.app_path(tmp_path / "home")
    _build(app)
    out = tmp_path / "child.log"
    child = tmp_path / "child.py"
    child.write_text(
        "import os, signal, sys, time\n"
        "def on(sig, frame):\n"
        "    open(sys.argv[1], 'a').write(signal.Signals(sig).name + '\\n')\n"
        "    if sig == signal.SIGTERM:\n"
        "        sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, on); signal.signal(signal.SIGHUP, on)\n"
        "open(sys.argv[1], 'a').write(f'{os.getpid()} {os.getppid()}\\n')\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    launcher = subprocess.Popen(
        [str(app_bundle.executable(app)), sys.executable, str(child), str(out)]
    )
    try:
        assert wait_until(lambda: out.exists() and out.read_text().endswith("\n"))
        pid, parent = map(int, out.read_text().split())
        assert pid != launcher.pid and parent == launcher.pid
        launcher.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP" in out.read_text())
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=20) == 7
        assert out.read_text().splitlines()[1:] == ["SIGHUP", "SIGTERM"]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    killed = subprocess.run([str(app_bundle.executable(app)), "/bin/sh", "-c", "kill -9 $$"])
    assert killed.returncode == 128 + 9
    alone = subprocess.run([str(app_bundle.executable(app))], capture_output=True, text=True)
    assert alone.returncode == 64 and "LaunchAgent" in alone.stderr


@needs_cc
def test_a_current_bundle_is_kept_and_an_older_one_replaced(
    apple: FakeApple, tmp_path: Path
) -> None:
    """Ad hoc, the identity is the binary's hash: an install over a bundle built from the same
    launcher keeps it untouched (no compile, no signing), so the grants stay; one built from
    another launcher is rebuilt, and the result says the grants must be redone."""
    app = app_bundle.app_path(tmp_path / "home")
    _build(app)
    exe = app_bundle.executable(app)
    before = (exe.read_bytes(), exe.stat().st_mtime_ns)
    calls = len(apple.calls())
    assert _build(app) == app_bundle.Built(app, rebuilt=False, replaced=False)
    assert (exe.read_bytes(), exe.stat().st_mtime_ns) == before
    assert [c[0] for c in apple.calls()[calls:]] == ["codesign"]  # --verify only
    source = app / "Contents" / "Resources" / "launcher.c"
    source.write_bytes(source.read_bytes() + b"/* an older launcher */\n")
    assert _build(app) == app_bundle.Built(app, rebuilt=True, replaced=True)
    assert source.read_bytes() == app_bundle.launcher_source()


def test_without_the_command_line_tools_nothing_is_built_and_the_way_out_is_named(
    apple: FakeApple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`xcode-select -p` fails: cc (a shim that would pop the tools dialog) is never run, and the
    error names both ways on: install the tools, or keep Python.app as the identity."""
    monkeypatch.setenv("FAKE_NO_CLT", "1")
    app = app_bundle.app_path(tmp_path / "home")
    with pytest.raises(app_bundle.BuildFailed) as failed:
        _build(app)
    assert "xcode-select --install" in failed.value.hint
    assert "--identity python" in failed.value.hint
    assert apple.calls("cc") == [] and not app.exists()


def _dry_plist(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    xml = "\n".join(ln for ln in result.stdout.splitlines() if not ln.startswith(("#", "$")))
    return dict(plistlib.loads(xml.encode()))


def test_the_launchagent_starts_the_app_and_the_app_starts_python(
    env: dict[str, str], tmp_path: Path
) -> None:
    """By default the agent's program is the app's executable with the venv's Python after
    it; the output says what to grant and where. --identity python starts Python directly.
    Either way: LANG is UTF-8 and the job's umask is 077."""
    result = run_cli(["install-service", "--dry-run"], env, cwd=tmp_path)
    plist = _dry_plist(result)
    app = Path(env["HOME"]) / "Applications" / "Archety Relay.app"
    assert plist["ProgramArguments"][:2] == [
        str(app / "Contents" / "MacOS" / "archety-relay"),
        str(Path(sys.executable).absolute()),
    ]
    assert plist["ProgramArguments"][2:] == ["-m", "archety_relay", "run"]
    assert plist["AssociatedBundleIdentifiers"] == ["com.archety.relay"]
    assert plist["EnvironmentVariables"]["LANG"] == "en_US.UTF-8"
    assert plist["Umask"] == 0o077
    assert "# macOS will ask about: Archety Relay (com.archety.relay)" in result.stdout
    assert f"Full Disk Access > + > {app}" in result.stdout
    assert "tccutil reset AppleEvents com.archety.relay" in result.stdout
    assert "$ codesign --force --sign - --identifier com.archety.relay" in result.stdout

    python = _dry_plist(
        run_cli(["install-service", "--dry-run", "--identity", "python"], env, cwd=tmp_path)
    )
    assert python["ProgramArguments"][0] == str(Path(sys.executable).absolute())
    assert "AssociatedBundleIdentifiers" not in python

    dry = run_cli(["uninstall-service", "--dry-run"], env, cwd=tmp_path)
    assert f"$ rm -r '{app}'" in dry.stdout


def test_doctor_names_the_identity_the_installed_agent_runs_as(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the app installed, doctor's Full Disk Access fix names "Archety Relay" and its
    path, not the Python; an agent whose app is gone fails with the way to rebuild it."""
    home = Path(env["HOME"])
    app = app_bundle.app_path(home)
    plist = launchd.agent_plist(
        sys.executable,
        tmp_path / "state",
        tmp_path / "logs",
        launcher=str(app_bundle.executable(app)),
        bundle_id=app_bundle.BUNDLE_ID,
    )
    launchd.agent_path(home).parent.mkdir(parents=True)
    launchd.agent_path(home).write_bytes(launchd.render(plist))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ARCHETY_CHAT_DB", str(tmp_path / "nowhere" / "chat.db"))
    checks = {c.name: c for c in doctor.run_checks(home=home)}
    assert "Archety Relay" in checks["chat.db readable"].fix
    assert str(app) in checks["chat.db readable"].fix
    assert not checks["app identity"].ok and "install-service" in checks["app identity"].fix
    app_bundle.executable(app).parent.mkdir(parents=True)
    app_bundle.executable(app).write_bytes(b"")
    (app / "Contents" / "Info.plist").write_bytes(plistlib.dumps(app_bundle.info_plist()))
    again = {c.name: c for c in doctor.run_checks(home=home)}["app identity"]
    assert again.ok and "com.archety.relay" in again.detail
    assert identity.installed(home, "/x/Python.app") == identity.of_app(app)


def test_the_log_directory_and_launchd_logs_are_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """install-service makes the log directory 0700 whatever the umask, and launchd's two log
    files 0600 before launchd opens them (it would create them 0644)."""
    old = os.umask(0o022)
    try:
        logs = tmp_path / "Logs" / "archety-relay"
        service._private_logs(logs)
        (logs / "launchd.err.log").chmod(0o644)
        service._private_logs(logs)
    finally:
        os.umask(old)
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    for name in ("launchd.out.log", "launchd.err.log"):
        assert stat.S_IMODE((logs / name).stat().st_mode) == 0o600
