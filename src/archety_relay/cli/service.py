"""`install-service` / `uninstall-service`: the LaunchAgent for this installation."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import config, macos
from ..errors import EXIT_CONFIG, RelayError
from ..macos import app_bundle, identity, interpreter, launchctl, launchd
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


def _private_logs(log_dir: Path) -> None:
    """The log directory 0700 and launchd's two files 0600 before launchd opens them: it creates
    them with its own umask, 0644 (review 2026-12-04, "Log directory mode"). A directory that
    exists is left as it is: it may be shared."""
    if not log_dir.exists():
        log_dir.mkdir(parents=True, mode=0o700)
    for name in ("launchd.out.log", "launchd.err.log"):
        path = log_dir / name
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(path, 0o600)


def _agent(
    args: argparse.Namespace, settings: config.Settings, home: Path
) -> tuple[dict[str, object], identity.Identity]:
    # Everything this shell configured, and the .env it reads by absolute path: the agent runs
    # in the state directory, where `./.env` is another file (review #13). Never the secret.
    environment = {"PATH": AGENT_PATH, **config.agent_environment(os.environ, settings.env_file)}
    python = str(Path(sys.executable).absolute())
    app = app_bundle.app_path(home)
    as_app = args.identity == identity.APP
    plist = launchd.agent_plist(
        python,
        settings.state_dir,
        settings.log_file.parent,
        environment,
        launcher=str(app_bundle.executable(app)) if as_app else None,
        bundle_id=app_bundle.BUNDLE_ID if as_app else None,
    )
    who = identity.of_app(app) if as_app else identity.of_python(real_interpreter())
    return plist, who


def _show_grants(who: identity.Identity, prefix: str) -> None:
    print(f"{prefix}macOS will ask about: {who.name} ({who.bundle_id})")
    print(f"{prefix}Full Disk Access: {who.fda_hint()}")
    print(f"{prefix}Automation: {who.automation_hint()}")


def cmd_install(args: argparse.Namespace) -> int:
    settings = config.load(require_secret=False)
    home = Path.home()
    plist, who = _agent(args, settings, home)
    target = launchd.agent_path(home)
    uid = os.getuid()
    if args.dry_run:
        if who.kind == identity.APP:
            print(f"# would build {who.grant} (kept as is when already built from this launcher):")
            _show_commands(app_bundle.build_commands(Path(who.grant)))
        print(f"# would write {target}:")
        sys.stdout.write(launchd.render(plist).decode())
        print("# then run (waiting for the bootout to finish, retrying bootstrap on exit 5):")
        _show_commands(launchd.install_commands(uid, target))
        _show_grants(who, "# ")
        return 0
    _refuse_off_macos("install-service")
    python = str(Path(sys.executable).absolute())
    unusable = interpreter.cannot_run_relay(python)
    if unusable is not None:
        raise RelayError(
            f"install-service: the LaunchAgent could not run the relay: {unusable}",
            hint=interpreter.PYTHON_ORG_HINT,
        )
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _private_logs(settings.log_file.parent)
    built = app_bundle.build(Path(who.grant)) if who.kind == identity.APP else None
    installed = launchctl.install(uid, target, launchd.render(plist))
    print(f"✅ installed and started {launchd.LABEL} ({target}), pid {installed.pid}")
    if built is not None:
        print(f"   {'built' if built.rebuilt else 'kept'} {built.app}")
    if built is not None and built.replaced:
        print(
            "   ⚠️  the app was rebuilt, and macOS treats it as new: the old grants no longer "
            "apply even where Settings shows them on. Clear them, then grant again: "
            f"tccutil reset SystemPolicyAllFiles {who.bundle_id}; "
            f"tccutil reset AppleEvents {who.bundle_id}"
        )
    _show_grants(who, "   ")
    print("   check with `archety-relay doctor`")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    home = Path.home()
    target = launchd.agent_path(home)
    app = app_bundle.app_path(home)
    commands = launchd.uninstall_commands(os.getuid())
    if args.dry_run:
        _show_commands(commands)
        print(f"$ rm {target}")
        print(f"$ rm -r '{app}'")
        return 0
    _refuse_off_macos("uninstall-service")
    launchctl.uninstall(os.getuid(), target)
    removed = app_bundle.remove(app)
    print(
        f"✅ stopped and removed {launchd.LABEL}{' and ' + app.name if removed else ''}; "
        "the outbox and logs are kept"
    )
    return 0
