"""Whether the relay may control Messages (the Automation grant), as the daemon last found it.

doctor never raises the consent prompt (it may run over SSH with nobody at the screen): it reads
what the daemon recorded, or looks quietly from this process; `automation-check` is what asks.
"""

from __future__ import annotations

from ... import macos
from ...config import Settings
from ...macos import automation, consent
from ...macos.identity import Identity
from .result import Check

NAME = "Messages automation"


def automation_check(
    settings: Settings, who: Identity | None = None, platform: str | None = None
) -> Check:
    if not macos.is_macos(platform):
        return Check(NAME, True, "skipped (not macOS)", skipped=True)
    if not settings.send_enabled:
        return Check(NAME, True, "sending disabled (ARCHETY_SEND_ENABLED=0)", skipped=True)
    hint = who.automation_hint() if who is not None else automation.NOT_ALLOWED_HINT
    # The grant belongs to the process that sends: what the daemon found counts, not this
    # Terminal's answer.
    found = automation.read(settings.state_dir)
    if found is not None:
        by = (
            f"the relay (pid {found.get('pid')}, {found.get('by') or 'probe'}) found at "
            f"{found.get('checked_at')}"
        )
        if found.get("ok"):
            return Check(NAME, True, f"{by}: allowed")
        return Check(NAME, False, f"{by}: {found.get('error') or 'not allowed'}", hint, 1)
    code = consent.determine()
    here = "looked from this shell, not the relay (start it and run doctor again)"
    state = automation.state_of(code)
    if state == automation.NOT_ALLOWED:
        return Check(NAME, False, f"{automation.describe(code)} ({here})", hint, 1)
    return Check(NAME, True, f"{automation.describe(code)} ({here})", skipped=True)
