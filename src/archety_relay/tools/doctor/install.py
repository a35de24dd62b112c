"""Checks of this installation: the Python, the LaunchAgent and what it carries, the log."""

from __future__ import annotations

import os
import plistlib
import sys
from pathlib import Path

from ... import config, macos
from ...config import Settings
from ...errors import (
    EXIT_CONFIG,
    EXIT_STATE,
    ConfigError,
)
from ...macos import app_bundle, identity, interpreter, launchd
from .result import Check


def relay_identity(home: Path) -> identity.Identity:
    """What macOS grants for the relay: the installed LaunchAgent's identity (its app, or the
    Python it starts), else this Python's."""
    fallback = interpreter.real_interpreter()
    return identity.installed(home, fallback) or identity.of_python(fallback)


def python_check(who: identity.Identity | None = None) -> Check:
    version = (sys.version_info[0], sys.version_info[1])
    image = interpreter.running_image()
    problem = interpreter.python_problem(version)
    if problem is not None:
        return Check("Python", False, problem, interpreter.PYTHON_ORG_HINT, EXIT_CONFIG)
    grant = who.grant if who is not None else interpreter.real_interpreter()
    detail = f"{version[0]}.{version[1]} running {image}; Full Disk Access goes to {grant}"
    advice = interpreter.python_advice(image)
    if advice:
        detail += f" (note: {advice}; {interpreter.RECOMMENDED} keeps its grants)"
    return Check("Python", True, detail)


def identity_check(who: identity.Identity, home: Path) -> Check:
    """The identity macOS asks about, and whether the app the LaunchAgent starts is there."""
    name = "app identity"
    if not launchd.agent_path(home).exists() and not macos.IS_MACOS:
        return Check(name, True, "skipped (not macOS, no LaunchAgent)", skipped=True)
    if who.kind == identity.PYTHON:
        return Check(
            name,
            True,
            f"{who.name} ({who.bundle_id}, {who.grant}): it has no "
            "NSAppleEventsUsageDescription, so Automation may be denied without a prompt",
            "archety-relay install-service (its own app 'Archety Relay' is the default)",
        )
    app = Path(who.grant)
    try:
        info = plistlib.loads((app / "Contents" / "Info.plist").read_bytes())
    except (OSError, ValueError):
        info = {}
    if not app_bundle.executable(app).is_file() or info.get("CFBundleIdentifier") != who.bundle_id:
        return Check(
            name,
            False,
            f"the LaunchAgent starts {app_bundle.executable(app)}, which is missing or damaged",
            "archety-relay install-service (builds it again)",
            1,
        )
    return Check(name, True, f"{who.name} ({who.bundle_id}) at {app}: grants go to it")


def launchagent_check(home: Path) -> Check:
    plist = launchd.agent_path(home)
    if not macos.IS_MACOS:
        return Check("LaunchAgent", True, "skipped (not macOS)", skipped=True)
    if not plist.exists():
        return Check(
            "LaunchAgent", False, f"{plist} not installed", "archety-relay install-service", 1
        )
    ran = macos.run(launchd.print_argv(os.getuid()))
    if ran.returncode != 0:
        return Check(
            "LaunchAgent",
            False,
            "installed but not loaded",
            "archety-relay install-service (re-loads it)",
            1,
        )
    state = next(
        (
            line.split("=", 1)[1].strip()
            for line in ran.output.splitlines()
            if line.strip().startswith("state =")
        ),
        "unknown",
    )
    if state != "running":
        return Check(
            "LaunchAgent",
            False,
            f"loaded, state {state}",
            f"launchctl kickstart -k gui/{os.getuid()}/{launchd.LABEL}; "
            "then archety-relay logs --errors",
            1,
        )
    return Check("LaunchAgent", True, "installed, loaded, running")


def agent_settings_check(settings: Settings, home: Path) -> Check:
    """Resolve the configuration as the installed LaunchAgent will (its environment, its
    working directory) and compare it with this shell's: a `.env` beside the code is invisible
    to an agent that runs in the state directory (review #13)."""
    name = "agent settings"
    path = launchd.agent_path(home)
    if not path.exists():
        return Check(name, True, "no LaunchAgent installed", skipped=True)
    fix = "run `archety-relay install-service` again from this shell (it carries your settings)"
    try:
        plist = plistlib.loads(path.read_bytes())
        environ = {str(k): str(v) for k, v in (plist.get("EnvironmentVariables") or {}).items()}
        agent = config.load(
            environ, Path(plist.get("WorkingDirectory") or settings.state_dir), require_secret=False
        )
    except (OSError, ValueError, ConfigError) as exc:
        return Check(name, False, f"the agent's configuration cannot be read: {exc}", fix, 1)
    differ = [
        f"{label} {theirs} (here {ours})"
        for label, theirs, ours in (
            ("backend", agent.backend_url, settings.backend_url),
            ("agent id", agent.agent_id, settings.agent_id),
            ("chat.db", agent.chat_db, settings.chat_db),
            ("state dir", agent.state_dir, settings.state_dir),
        )
        if theirs != ours
    ]
    if differ:
        return Check(name, False, "the LaunchAgent would use " + "; ".join(differ), fix, 1)
    if settings.secret_source in (".env", "environment") and agent.secret_source == "none":
        return Check(
            name,
            False,
            f"the secret comes from the {settings.secret_source} here, which the agent does not "
            "read (it reads its .env and the Keychain)",
            "archety-relay set-secret (stores it where the agent reads it)",
            1,
        )
    return Check(name, True, f"the LaunchAgent reads the same settings (.env: {agent.env_file})")


def log_check(settings: Settings) -> Check:
    try:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(settings.log_file, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        return Check(
            "log file",
            False,
            f"{settings.log_file}: {exc}",
            "set ARCHETY_LOG_FILE to a writable path",
            EXIT_STATE,
        )
    return Check("log file", True, f"{settings.log_file} writable")
