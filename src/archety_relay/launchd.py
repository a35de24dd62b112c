"""The LaunchAgent: its plist and the launchctl command lines, built as values, never run here.

A *user* LaunchAgent, not a system daemon: chat.db and the login Keychain belong to the logged-in
user, and recent macOS keeps system daemons away from both. KeepAlive restarts the relay only when
it fails (a clean `launchctl bootout` stays stopped). The plist carries no secret: `launchctl print`
shows every job's environment to anyone on the machine.
"""

from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Any

LABEL = "com.archety.relay"
THROTTLE_SECONDS = 30


def agent_plist(
    python: str, state_dir: Path, log_dir: Path, environment: dict[str, str] | None = None
) -> dict[str, Any]:
    """The agent for this installation. `python` is the venv's interpreter (it finds our package);
    Full Disk Access is granted to the real binary behind it, which macOS checks."""
    env = {"PYTHONUNBUFFERED": "1", **(environment or {})}
    if any("SECRET" in key.upper() for key in env):
        raise ValueError("the LaunchAgent plist must never carry the secret")
    return {
        "Label": LABEL,
        "ProgramArguments": [python, "-m", "archety_relay", "run"],
        "WorkingDirectory": str(state_dir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_SECONDS,
        # Not "Background": that class is throttled for CPU and I/O, and latency is the product.
        "ProcessType": "Standard",
        "StandardOutPath": str(log_dir / "launchd.out.log"),
        "StandardErrorPath": str(log_dir / "launchd.err.log"),
        "EnvironmentVariables": env,
    }


def render(plist: dict[str, Any]) -> bytes:
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=False)


def agent_path(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def install_commands(uid: int, plist_path: Path) -> list[list[str]]:
    """Re-install: bootout (may fail if not loaded), bootstrap, then kickstart to (re)start."""
    domain = f"gui/{uid}"
    return [
        ["launchctl", "bootout", f"{domain}/{LABEL}"],
        ["launchctl", "bootstrap", domain, str(plist_path)],
        ["launchctl", "kickstart", "-k", f"{domain}/{LABEL}"],
    ]


def uninstall_commands(uid: int) -> list[list[str]]:
    return [["launchctl", "bootout", f"gui/{uid}/{LABEL}"]]
