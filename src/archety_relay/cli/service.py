"""`install-service` / `uninstall-service`: the LaunchAgent for this installation."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import config, launchd, macos
from ..doctor import real_interpreter
from ..errors import EXIT_CONFIG, RelayError

# Variables worth carrying into the agent's environment when set here (never the secret).
_CARRIED = (
    "ARCHETY_BACKEND_URL",
    "EDGE_AGENT_ID",
    "ARCHETY_CHAT_DB",
    "ARCHETY_STATE_DIR",
    "ARCHETY_LOG_FILE",
    "ARCHETY_HEARTBEAT_INTERVAL",
    "ARCHETY_SYNC_INTERVAL",
    "ARCHETY_MAX_MESSAGE_AGE",
    "ARCHETY_ENV_FILE",
)
AGENT_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


class NotMacOS(RelayError):
    exit_code = EXIT_CONFIG


def _refuse_off_macos(what: str) -> None:
    if not macos.IS_MACOS:
        raise NotMacOS(
            f"{what} manages a macOS LaunchAgent and this is {sys.platform}",
            hint="add --dry-run to see the plist and the launchctl commands it would use",
        )


def _show_commands(commands: list[list[str]]) -> None:
    for argv in commands:
        print("$ " + " ".join(argv))


def cmd_install(args: argparse.Namespace) -> int:
    settings = config.load(require_secret=False)
    environment = {"PATH": AGENT_PATH}
    environment.update({k: os.environ[k] for k in _CARRIED if os.environ.get(k)})
    python = str(Path(sys.executable).absolute())
    plist = launchd.agent_plist(python, settings.state_dir, settings.log_file.parent, environment)
    home = Path.home()
    target = launchd.agent_path(home)
    commands = launchd.install_commands(os.getuid(), target)
    if args.dry_run:
        print(f"# would write {target}:")
        sys.stdout.write(launchd.render(plist).decode())
        print("# then run:")
        _show_commands(commands)
        print(f"# Full Disk Access is needed for: {real_interpreter()}")
        return 0
    _refuse_off_macos("install-service")
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.log_file.parent.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(launchd.render(plist))
    for argv in commands:
        ran = macos.run(argv)
        if ran.returncode != 0 and argv[1] != "bootout":  # bootout fails when not yet loaded
            raise RelayError(
                f"{' '.join(argv)} failed: {ran.output}",
                hint="check `launchctl print gui/$(id -u)/com.archety.relay`",
            )
    print(f"✅ installed and started {launchd.LABEL} ({target})")
    print(
        f"   Full Disk Access must be granted to {real_interpreter()}; "
        "check with `archety-relay doctor`."
    )
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    target = launchd.agent_path(Path.home())
    commands = launchd.uninstall_commands(os.getuid())
    if args.dry_run:
        _show_commands(commands)
        print(f"$ rm {target}")
        return 0
    _refuse_off_macos("uninstall-service")
    for argv in commands:
        macos.run(argv)
    target.unlink(missing_ok=True)
    print(f"✅ stopped and removed {launchd.LABEL}; the outbox and logs are kept")
    return 0
