"""`archety-relay doctor`: every precondition checked in order, one result each, with the fix.

Each check is a function returning `Check`; they run in order and later checks use what earlier
ones found (no secret: the backend check says so instead of guessing). Nothing here prints.
"""

from __future__ import annotations

import os
import plistlib
import socket
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from . import automation, config, launchd, macos, messages_app
from .backend import Backend
from .chatdb import ChatDb
from .config import Settings
from .errors import (
    EXIT_AUTH,
    EXIT_BACKEND,
    EXIT_CHATDB,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_STATE,
    ConfigError,
    OutboxCorrupt,
    RelayError,
)
from .macos import interpreter
from .store import OUTBOX_FILE, open_store

FDA_LOCATION = "System Settings > Privacy & Security > Full Disk Access"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    exit_code: int = EXIT_OK  # what a failure of this check means for scripts
    skipped: bool = False


def real_interpreter() -> str:
    """What to grant Full Disk Access: the image this Python runs (for a framework build, the
    enclosing Python.app; `realpath(sys.executable)` would name the stub that execs it)."""
    return interpreter.fda_target(interpreter.running_image())


def _python_check() -> Check:
    version = (sys.version_info[0], sys.version_info[1])
    image = interpreter.running_image()
    problem = interpreter.python_problem(version)
    if problem is not None:
        return Check("Python", False, problem, interpreter.PYTHON_ORG_HINT, EXIT_CONFIG)
    detail = (
        f"{version[0]}.{version[1]} running {image}; Full Disk Access goes to {real_interpreter()}"
    )
    advice = interpreter.python_advice(image)
    if advice:
        detail += f" (note: {advice}; {interpreter.RECOMMENDED} keeps its grants)"
    return Check("Python", True, detail)


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
    for check in (
        _python_check(),
        _url_check(settings),
        _dns_check(settings),
        _backend_check(settings)
        if has_secret
        else Check(
            "backend accepts secret",
            False,
            "skipped: no secret",
            "archety-relay set-secret",
            EXIT_CONFIG,
        ),
        _chatdb_check(settings),
        _wal_check(settings),
        _state_check(settings),
        _launchagent_check(home or Path.home()),
        agent_settings_check(settings, home or Path.home()),
        automation_check(settings),
        _log_check(settings),
    ):
        checks.append(check)
    return checks


def exit_code(checks: list[Check]) -> int:
    for check in checks:
        if not check.ok and not check.skipped:
            return check.exit_code or 1
    return EXIT_OK


def _url_check(settings: Settings) -> Check:
    parts = urllib.parse.urlsplit(settings.backend_url)
    if parts.scheme == "https":
        return Check("backend URL", True, f"{settings.backend_url} (https)")
    if config.is_loopback(parts.hostname):
        return Check("backend URL", True, f"{settings.backend_url} (loopback)")
    return Check(
        "backend URL",
        False,
        f"{settings.backend_url} is plain http",
        "use https: the secret would travel in clear text",
        EXIT_CONFIG,
    )


def _dns_check(settings: Settings) -> Check:
    parts = urllib.parse.urlsplit(settings.backend_url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError as exc:
        return Check(
            "DNS",
            False,
            f"{host} does not resolve: {exc}",
            "check the Mac mini's network and DNS settings",
            EXIT_BACKEND,
        )
    address = infos[0][4][0] if infos else "?"
    return Check("DNS", True, f"{host} → {address}")


def _backend_check(settings: Settings) -> Check:
    backend = Backend.from_settings(settings, read_timeout=10.0)
    try:
        outcome = backend.heartbeat()
    finally:
        backend.close()
    if outcome.ok:
        return Check(
            "backend accepts secret",
            True,
            f"heartbeat {outcome.summary()}",
        )
    if outcome.status in (401, 403):
        return Check(
            "backend accepts secret",
            False,
            f"heartbeat rejected with HTTP {outcome.status}: the backend does not accept "
            f"RELAY_WEBHOOK_SECRET (from {settings.secret_source})",
            "set the current secret: archety-relay set-secret (or fix .env / the environment)",
            EXIT_AUTH,
        )
    if outcome.status is None:
        return Check(
            "backend accepts secret",
            False,
            f"no answer from {settings.backend_url} ({outcome.error})",
            "check the URL and the network; messages queue meanwhile",
            EXIT_BACKEND,
        )
    return Check(
        "backend accepts secret",
        False,
        f"heartbeat answered HTTP {outcome.status}",
        "the backend is failing; messages queue meanwhile",
        EXIT_BACKEND,
    )


def _chatdb_check(settings: Settings) -> Check:
    fix = (
        f"grant Full Disk Access to {real_interpreter()} in {FDA_LOCATION} "
        "(⇧⌘G to type the path), then restart the relay"
    )
    try:
        with ChatDb(settings.chat_db) as chatdb:
            top = chatdb.max_rowid()
    except RelayError as exc:
        # Full Disk Access only when the error is about access (chatdb decides which).
        access = "Full Disk Access" in exc.hint or not exc.hint
        return Check(
            "chat.db readable", False, exc.message, fix if access else exc.hint, EXIT_CHATDB
        )
    return Check("chat.db readable", True, f"{settings.chat_db} (MAX(ROWID) {top})")


def _wal_check(settings: Settings) -> Check:
    wal = Path(str(settings.chat_db) + "-wal")
    if not wal.exists():
        return Check("chat.db WAL", True, "no WAL right now (checkpointed)")
    try:
        with open(wal, "rb") as f:
            f.read(32)
    except OSError as exc:
        return Check(
            "chat.db WAL",
            False,
            f"{wal} cannot be read: {exc}",
            f"grant Full Disk Access to {real_interpreter()}",
            EXIT_CHATDB,
        )
    return Check("chat.db WAL", True, f"{wal} readable ({wal.stat().st_size} bytes)")


def _state_check(settings: Settings) -> Check:
    existed = (settings.state_dir / OUTBOX_FILE).exists()
    try:
        store = open_store(settings.state_dir)
        try:
            stats = store.stats()
        finally:
            store.close()
        probe = settings.state_dir / ".doctor-write-test"
        probe.write_text("ok")
        probe.unlink()
    except (RelayError, OSError) as exc:
        return Check(
            "state directory",
            False,
            f"{settings.state_dir}: {exc}",
            exc.hint
            if isinstance(exc, OutboxCorrupt)  # damaged, not full: run/--once repairs it
            else "make ARCHETY_STATE_DIR writable and free some space",
            EXIT_STATE,
        )
    what = (
        f"queue {stats.depth}, dead letters {stats.dead_letters}"
        if existed
        else "new outbox created"
    )
    return Check("state directory", True, f"{settings.state_dir} writable; {what}")


def _launchagent_check(home: Path) -> Check:
    plist = launchd.agent_path(home)
    if not macos.IS_MACOS:
        return Check("LaunchAgent", True, "skipped (not macOS)", skipped=True)
    if not plist.exists():
        return Check(
            "LaunchAgent", False, f"{plist} not installed", "archety-relay install-service", 1
        )
    ran = macos.run(["launchctl", "print", f"gui/{os.getuid()}/{launchd.LABEL}"])
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


def automation_check(settings: Settings, platform: str | None = None) -> Check:
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
        who = f"the relay (pid {found.get('pid')}) found at {found.get('checked_at')}"
        if found.get("ok"):
            return Check("Messages automation", True, f"{who}: allowed (count of accounts)")
        return Check(
            "Messages automation",
            False,
            f"{who}: {found.get('error') or 'not allowed'}",
            messages_app.AUTOMATION_HINT
            + "; the first send asks on the Mac's screen: answer it once (Screen Sharing)",
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
        messages_app.AUTOMATION_HINT,
        1,
    )


def _log_check(settings: Settings) -> Check:
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
