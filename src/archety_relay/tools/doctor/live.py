"""`archety-relay doctor --live`: the first-hour check on a real Mac, as one pasteable report.

It answers what Linux tests cannot: which image this Python runs (what Full Disk Access must
name) and whether it can read chat.db, how this chat.db spells chat guids (macOS 26: `any;`),
whether the file watcher fires for the next incoming message and how fast, whether Automation
is granted (a quiet look from this process, never a prompt, and as the daemon recorded it), the
LaunchAgent's state and the image it runs, and the power, FileVault and auto-login settings an
unattended Mac mini needs. Every outside command goes through `macos.run`; off macOS those
lines say so.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ... import config, macos
from ...capture import detection
from ...chatdb import rows, watcher
from ...chatdb.reader import ChatDb
from ...errors import RelayError
from ...macos import automation, consent, interpreter, launchd, messages_app
from ...model import utc_iso
from . import health
from .install import relay_identity

Line = tuple[str, str]
# After a file event the commit becomes visible a moment later: look again quickly this long.
SETTLE_SECONDS = 0.25


def report(
    wait_seconds: float,
    *,
    platform: str | None = None,
    say: Callable[[str], None] = print,
    uid: int | None = None,
) -> list[Line]:
    """Run every live check, printing each line as it is known (the wait is long)."""
    lines: list[Line] = []

    def add(name: str, value: str) -> None:
        lines.append((name, value))
        say(f"{name:<12}: {value}")

    settings = config.load(require_secret=False)
    add("time", utc_iso(time.time()))
    add("macOS", _first_line(["sw_vers", "-productVersion"], platform))
    image = interpreter.running_image(platform=platform)
    add("python", f"{sys.version.split()[0]} running {image}")
    add("FDA target", interpreter.fda_target(image) + " (this shell's Python)")
    who = relay_identity(Path.home())
    add(
        "identity",
        f"the relay runs as {who.name} ({who.bundle_id}): Full Disk Access > {who.grant}; "
        f"Automation > {who.name} > Messages",
    )
    try:
        with ChatDb(settings.chat_db) as chatdb:
            top = chatdb.max_rowid()
            forms = chatdb.guid_forms()
        add("chat.db", f"readable by this process: Full Disk Access works ({settings.chat_db})")
        add("guid forms", ", ".join(f"{k} {n}" for k, n in forms.items()) or "no chats")
    except RelayError as exc:
        add("chat.db", f"NOT readable: {exc.message}")
        top = None
    said = messages_app.argv_self_test()
    add(
        "argv test",
        f"argv intact ({said})"
        if said == messages_app.SELF_TEST_EXPECTED
        else f"argv NOT intact: got {said!r}, expected {messages_app.SELF_TEST_EXPECTED!r}",
    )
    # Quietly: doctor never raises the prompt (`automation-check` does, with someone watching).
    add("automation", f"this shell: {automation.describe(consent.determine())} (no prompt)")
    recorded = automation.read(settings.state_dir)
    if recorded is not None:
        state = "allowed" if recorded.get("ok") else f"NOT allowed: {recorded.get('error')}"
        add("daemon auto", f"{state} (pid {recorded.get('pid')}, {recorded.get('checked_at')})")
    add("agent", _agent(platform, uid))
    noticed = detection.read(settings.state_dir)
    if noticed and noticed.get("messages"):
        add(
            "daemon p50",
            f"{noticed.get('watcher')}: p50 {noticed['p50_ms']:g} ms, p99 "
            f"{noticed['p99_ms']:g} ms over {noticed['messages']} ({noticed.get('noticed_by')})",
        )
    for name, value in health.lines(settings, platform):
        add(name, value)
    add("power", _pmset(platform))
    add("FileVault", _first_line(["fdesetup", "status"], platform))
    add(
        "auto-login",
        _first_line(
            ["defaults", "read", "/Library/Preferences/com.apple.loginwindow", "autoLoginUser"],
            platform,
        ),
    )
    if top is not None and wait_seconds > 0:
        add("watcher", _next_message(settings.chat_db, top, wait_seconds, platform, say))
    return lines


def _first_line(argv: list[str], platform: str | None) -> str:
    ran = macos.run(argv, platform=platform)
    if ran.returncode == 127 and ran.output == "not macOS":
        return "skipped (not macOS)"
    text = ran.output.strip().splitlines()
    if ran.returncode != 0:
        return f"unknown (exit {ran.returncode}{': ' + text[0] if text else ''})"
    return text[0] if text else "(empty)"


def _pmset(platform: str | None) -> str:
    ran = macos.run(["pmset", "-g"], platform=platform)
    if ran.returncode != 0:
        return "skipped (not macOS)" if ran.output == "not macOS" else f"unknown: {ran.output}"
    wanted = ("sleep", "autorestart", "womp", "disksleep")
    found = []
    for line in ran.output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in wanted:
            found.append(f"{parts[0]} {parts[1]}")
    return ", ".join(found) + " (want sleep 0, autorestart 1)"


def _agent(platform: str | None, uid: int | None) -> str:
    who = uid if uid is not None else os.getuid()
    ran = macos.run(launchd.print_argv(who), platform=platform)
    if ran.output == "not macOS":
        return "skipped (not macOS)"
    if ran.returncode != 0:
        return "not loaded (archety-relay install-service)"
    pid = launchd.pid_of(ran.output)
    state = launchd.field_of(ran.output, "state") or "unknown"
    if pid is None:
        return f"loaded, state {state}, last exit code {launchd.field_of(ran.output, 'last exit code')}"
    comm = macos.run(["ps", "-o", "comm=", "-p", str(pid)], platform=platform).output
    return f"state {state}, pid {pid}, runs {comm or '?'} (Full Disk Access must name its .app)"


def _next_message(
    chat_db: Path, top: int, wait_seconds: float, platform: str | None, say: Callable[[str], None]
) -> str:
    """Wait for the next row; say whether a file event or only the 1 s check saw it, and the
    delay from the message's own date."""
    wake = threading.Event()
    kind = watcher.observer_kind(platform)
    try:
        observer = watcher.watch(chat_db, wake, platform=platform)
    except Exception as exc:
        observer = None
        kind = f"{kind} (failed to start: {type(exc).__name__}: {exc})"
    say(f"{'watcher':<12}: {kind} started; send this Mac a message within {wait_seconds:g} s …")
    last_event = float("-inf")
    deadline = time.monotonic() + wait_seconds
    try:
        with ChatDb(chat_db) as chatdb:
            while time.monotonic() < deadline:
                settling = time.monotonic() - last_event < SETTLE_SECONDS
                if wake.wait(0.01 if settling else 1.0):
                    wake.clear()
                    last_event = time.monotonic()
                new = chatdb.read_after(top, 1)
                if not new:
                    continue
                seen = time.time()
                via = "file_event" if time.monotonic() - last_event < 1.0 else "timer"
                date = rows.unix_time(new[0].date)
                delay = f"{(seen - date) * 1000:.0f} ms after its date" if date else "(no date)"
                return f"{kind}: row {new[0].rowid} noticed by {via}, {delay}"
    finally:
        if observer is not None:
            observer.stop()
    return f"{kind}: no new message within {wait_seconds:g} s"
