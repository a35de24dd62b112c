"""The LaunchAgent: its plist and the launchctl command lines, built as values, never run here.

A *user* LaunchAgent, not a system daemon: chat.db and the login Keychain belong to the logged-in
user, and recent macOS keeps system daemons away from both. It exists only in a GUI (Aqua)
session, so an unattended Mac needs auto-login. KeepAlive restarts the relay only when
it fails (a clean `launchctl bootout` stays stopped). The plist carries no secret: `launchctl print`
shows every job's environment to anyone on the machine.
"""

from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Any

LABEL = "com.archety.relay"
# Only after a crash loop; a clean restart is immediate.
THROTTLE_SECONDS = 10
# launchctl's exit codes that mean something to an operator.
EXIT_IO_ERROR = 5  # bootstrap right after bootout: the old job is still being torn down
EXIT_IN_PROGRESS = 37  # "Operation already in progress": the same, seen on some releases
EXIT_NO_GUI_SESSION = 125  # no Aqua login for this user (SSH only, before auto-login)
# "Could not find domain": with `launchctl print gui/<uid>` failing as well, the same as 125.
# Over SSH with no GUI login, bootstrap can also fail with a plain 5 (psimaker/vaultsync#89).
EXIT_NO_DOMAIN = 112
NO_GUI_SESSION_HINT = (
    "no GUI login session: log in on the Mac (auto-login) first. A LaunchAgent in "
    "gui/<uid> needs one (Messages, Automation and the login keychain live there too). Log in "
    "on the Mac's screen (or Screen Sharing) first, and for unattended restarts turn on "
    "auto-login (FileVault off, or `sudo fdesetup authrestart` for a planned restart), then "
    "run install-service again from that session or over SSH while it is logged in."
)


# launchd.plist(5): Umask is "what value should be passed to umask(2) before running the job",
# an integer in decimal: 63 = 0o077, so what the job creates is private to the user.
UMASK = 0o077
# A LaunchAgent starts without the login shell's locale; osascript and Python then fall back to
# ASCII/C for argv and output (../shared/notes/macos.md, "Paper check": add LANG to the agent).
LOCALE = "en_US.UTF-8"


def agent_plist(
    python: str,
    state_dir: Path,
    log_dir: Path,
    environment: dict[str, str] | None = None,
    launcher: str | None = None,
    bundle_id: str | None = None,
) -> dict[str, Any]:
    """The agent for this installation. `python` is the venv's interpreter (it finds our
    package). With `launcher` (the executable of the relay's app, see app_bundle) launchd starts
    that, and it spawns `python` as its child: macOS then attributes Full Disk Access and
    Automation to the app (`bundle_id`), not to Python.app."""
    env = {"PYTHONUNBUFFERED": "1", "LANG": LOCALE, **(environment or {})}
    if any("SECRET" in key.upper() for key in env):
        raise ValueError("the LaunchAgent plist must never carry the secret")
    plist: dict[str, Any] = {
        "Label": LABEL,
        "ProgramArguments": [
            *([launcher] if launcher else []),
            python,
            "-m",
            "archety_relay",
            "run",
        ],
        "WorkingDirectory": str(state_dir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_SECONDS,
        # Only Interactive is unthrottled: Standard (= none set) gets "light resource limits",
        # throttled CPU and I/O, and latency is the product.
        "ProcessType": "Interactive",
        # Messages, Automation and the login keychain exist only in the user's GUI session.
        "LimitLoadToSessionType": "Aqua",
        # launchd.{out,err}.log and anything else the job creates: 0600, not launchd's 0644
        # (review 2026-12-04, "Log directory mode").
        "Umask": UMASK,
        "StandardOutPath": str(log_dir / "launchd.out.log"),
        "StandardErrorPath": str(log_dir / "launchd.err.log"),
        "EnvironmentVariables": env,
    }
    if bundle_id:
        # Login Items (macOS 13+) then lists the agent under the app's name (BlueBubbles does
        # the same), not as an unknown item.
        plist["AssociatedBundleIdentifiers"] = [bundle_id]
    return plist


def render(plist: dict[str, Any]) -> bytes:
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=False)


def agent_path(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def service_target(uid: int) -> str:
    return f"gui/{uid}/{LABEL}"


def enable_argv(uid: int) -> list[str]:
    """A label disabled earlier (Login Items switch, `launchctl disable`) refuses to bootstrap."""
    return ["launchctl", "enable", service_target(uid)]


def bootout_argv(uid: int) -> list[str]:
    return ["launchctl", "bootout", service_target(uid)]


def domain_print_argv(uid: int) -> list[str]:
    """Fails when this user has no GUI (Aqua) session at all."""
    return ["launchctl", "print", f"gui/{uid}"]


def print_argv(uid: int) -> list[str]:
    return ["launchctl", "print", service_target(uid)]


def bootstrap_argv(uid: int, plist_path: Path) -> list[str]:
    return ["launchctl", "bootstrap", f"gui/{uid}", str(plist_path)]


def install_commands(uid: int, plist_path: Path) -> list[list[str]]:
    """What install-service runs, in order (shown by --dry-run). Between bootout and bootstrap
    it waits until `print` fails (bootout returns before teardown ends); bootstrap is retried
    on exit 5/37; `print` then confirms a pid. RunAtLoad starts the job: no `kickstart -k`,
    which would kill the instance bootstrap just started."""
    return [
        enable_argv(uid),
        bootout_argv(uid),
        print_argv(uid),
        bootstrap_argv(uid, plist_path),
        print_argv(uid),
    ]


def uninstall_commands(uid: int) -> list[list[str]]:
    return [bootout_argv(uid)]


def pid_of(print_output: str) -> int | None:
    """The running pid in `launchctl print` output, or None."""
    for line in print_output.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "pid" and value.strip().isdigit():
            return int(value.strip())
    return None


def field_of(print_output: str, name: str) -> str | None:
    """A top-level `name = value` field of `launchctl print` output (state, last exit code)."""
    for line in print_output.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == name and value:
            return value.strip()
    return None
