"""Whether the relay may control Messages (the Automation grant), as the daemon last found it."""

from __future__ import annotations

from ... import macos
from ...config import Settings
from ...macos import automation, messages_app
from ...macos.identity import Identity
from .result import Check


def automation_check(
    settings: Settings, who: Identity | None = None, platform: str | None = None
) -> Check:
    if not macos.is_macos(platform):
        return Check("Messages automation", True, "skipped (not macOS)", skipped=True)
    if not settings.send_enabled:
        return Check(
            "Messages automation", True, "sending disabled (ARCHETY_SEND_ENABLED=0)", skipped=True
        )
    # The grant belongs to the process that sends: what the daemon found counts, not this
    # Terminal's answer.
    found = automation.read(settings.state_dir)
    if found is not None:
        by = f"the relay (pid {found.get('pid')}) found at {found.get('checked_at')}"
        if found.get("ok"):
            return Check("Messages automation", True, f"{by}: allowed (count of accounts)")
        return Check(
            "Messages automation",
            False,
            f"{by}: {found.get('error') or 'not allowed'}",
            who.automation_hint() if who is not None else messages_app.AUTOMATION_HINT,
            1,
        )
    result = messages_app.automation_allowed()
    here = "from this shell, not the relay's agent (start it and run doctor again)"
    if result.ok:
        return Check("Messages automation", True, f"allowed {here}")
    return Check(
        "Messages automation",
        False,
        f"{result.error or 'not allowed'} ({here})",
        who.automation_hint() if who is not None else messages_app.AUTOMATION_HINT,
        1,
    )
