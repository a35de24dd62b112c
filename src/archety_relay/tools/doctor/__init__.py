"""`archety-relay doctor`: every precondition checked in order, one result each, with the fix.

Each check is a function returning `Check`; they run in order and later checks use what earlier
ones found (no secret: the backend check says so instead of guessing). Nothing here prints.

    install      the Python, the LaunchAgent and its settings, the log
    network      the backend's URL, DNS, and whether it takes the secret
    data         chat.db (Full Disk Access, WAL), the state file, Contacts
    automation   the Automation grant for Messages
    live         `doctor --live`: the first-hour report on a real Mac
"""

from __future__ import annotations

from pathlib import Path

from ... import config
from ...errors import EXIT_CONFIG, EXIT_OK, ConfigError
from .automation import automation_check
from .data import chatdb_check, contacts_check, state_check, wal_check
from .install import (
    agent_settings_check,
    identity_check,
    launchagent_check,
    log_check,
    python_check,
    relay_identity,
)
from .network import backend_check, dns_check, url_check
from .result import FDA_LOCATION, Check

__all__ = [
    "FDA_LOCATION",
    "Check",
    "agent_settings_check",
    "automation_check",
    "exit_code",
    "run_checks",
]


def run_checks(
    environ: dict[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
) -> list[Check]:
    checks: list[Check] = []
    try:
        settings = config.load(environ, cwd)
        checks.append(Check("configuration", True, f"loaded (.env: {settings.env_file or 'none'})"))
        checks.append(
            Check(
                "secret",
                True,
                f"found in {settings.secret_source}"
                + (f", ends …{settings.secret.last4()}" if settings.secret.last4() else ""),
            )
        )
    except ConfigError as exc:
        missing_secret = config.SECRET_VARIABLE in exc.message and "No webhook" in exc.message
        try:
            settings = config.load(environ, cwd, require_secret=False)
        except ConfigError:
            checks.append(
                Check(
                    "configuration", False, exc.message, "fix the variable named above", EXIT_CONFIG
                )
            )
            return checks
        if missing_secret:
            checks.append(Check("configuration", True, "loaded"))
            keychain_problem = exc.message.partition(config.KEYCHAIN_PROBLEM)[2]
            checks.append(
                Check(
                    "secret",
                    False,
                    "not found in environment, .env or Keychain"
                    + (f" (Keychain: {keychain_problem})" if keychain_problem else ""),
                    "archety-relay set-secret (stores it trusted for this interpreter, so "
                    "launchd reads it without a Keychain dialog)",
                    EXIT_CONFIG,
                )
            )
        else:
            checks.append(Check("configuration", False, exc.message, "", EXIT_CONFIG))
    has_secret = bool(settings.secret.reveal())
    who = relay_identity(home or Path.home())
    for check in (
        python_check(who),
        url_check(settings),
        dns_check(settings),
        backend_check(settings)
        if has_secret
        else Check(
            "backend accepts secret",
            False,
            "skipped: no secret",
            "archety-relay set-secret",
            EXIT_CONFIG,
        ),
        chatdb_check(settings, who),
        wal_check(settings, who),
        state_check(settings),
        contacts_check(settings, who),
        identity_check(who, home or Path.home()),
        launchagent_check(home or Path.home()),
        agent_settings_check(settings, home or Path.home()),
        automation_check(settings, who),
        log_check(settings),
    ):
        checks.append(check)
    return checks


def exit_code(checks: list[Check]) -> int:
    for check in checks:
        if not check.ok and not check.skipped:
            return check.exit_code or 1
    return EXIT_OK
