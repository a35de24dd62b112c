"""`install-service` / `uninstall-service`: the LaunchAgent for this installation."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import config, macos
from ..errors import EXIT_CONFIG, RelayError
from ..macos import interpreter, launchctl, launchd
from ..macos.interpreter import real_interpreter

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
    # Everything this shell configured, and the .env it reads by absolute path: the agent runs
    # in the state directory, where `./.env` is another file (review #13). Never the secret.
    environment = {"PATH": AGENT_PATH, **config.agent_environment(os.environ, settings.env_file)}
    python = str(Path(sys.executable).absolute())
    plist = launchd.agent_plist(python, settings.state_dir, settings.log_file.parent, environment)
    home = Path.home()
    target = launchd.agent_path(home)
    uid = os.getuid()
    if args.dry_run:
        print(f"# would write {target}:")
        sys.stdout.write(launchd.render(plist).decode())
        print("# then run (waiting for the bootout to finish, retrying bootstrap on exit 5):")
        _show_commands(launchd.install_commands(uid, target))
        print(f"# Full Disk Access is needed for: {real_interpreter()}")
        return 0
    _refuse_off_macos("install-service")
    unusable = interpreter.cannot_run_relay(python)
    if unusable is not None:
        raise RelayError(
            f"install-service: the LaunchAgent could not run the relay: {unusable}",
            hint=interpreter.PYTHON_ORG_HINT,
        )
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.log_file.parent.mkdir(parents=True, exist_ok=True)
    installed = launchctl.install(uid, target, launchd.render(plist))
    print(f"✅ installed and started {launchd.LABEL} ({target}), pid {installed.pid}")
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
    launchctl.uninstall(os.getuid(), target)
    print(f"✅ stopped and removed {launchd.LABEL}; the outbox and logs are kept")
    return 0
