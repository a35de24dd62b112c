"""`automation-check`: ask macOS, with someone watching the screen, to let the relay control
Messages (see tools.automation_check)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import config
from ..errors import EXIT_OK, ConfigError
from ..macos import app_bundle
from ..tools import automation_check
from ..tools.doctor.install import relay_identity

EXIT_NOT_ALLOWED = 1


def cmd_automation_check(args: argparse.Namespace) -> int:
    settings = config.load(require_secret=False)
    if not settings.send_enabled:
        raise ConfigError(
            "sending is disabled (ARCHETY_SEND_ENABLED=0): the relay never controls Messages",
            hint="set ARCHETY_SEND_ENABLED=1 first",
        )
    who = relay_identity(Path.home())
    print(
        "👀 Watch the Mac's screen now (Screen Sharing is fine): macOS will ask whether "
        f'"{who.name}" may control "Messages". Click OK. Waiting up to {args.wait:g} s …',
        flush=True,
    )
    answer = automation_check.check(settings.state_dir, args.wait)
    reset = f"tccutil reset AppleEvents {who.bundle_id}"
    if answer is None:
        print(
            "✗ the running relay did not answer (is it stuck, or an older version?): "
            "archety-relay logs --errors"
        )
        return EXIT_NOT_ALLOWED
    where = (
        f"by the relay (pid {answer.pid})"
        if answer.by_daemon
        else "from this shell, NOT the relay: this tested Terminal's (or sshd's) own grant; "
        "start the relay (install-service) and run automation-check again"
    )
    if answer.allowed:
        print(f"✅ allowed: {who.name} may control Messages (checked {where})")
        return EXIT_OK
    detail = answer.detail or "not allowed"
    print(f"✗ not allowed (checked {where}): {detail}")
    if "did not finish" in detail:
        print(f"  nobody answered within {args.wait:g} s; macOS may have stored that as a denial")
    print(f"  fix: {reset}, then run automation-check again while watching the screen")
    if who.bundle_id != app_bundle.BUNDLE_ID:
        print(f"  note: {who.automation_hint()}")
    return EXIT_NOT_ALLOWED
