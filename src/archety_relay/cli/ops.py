"""`doctor`, `set-secret`, `test-message`, `backfill`: the operator's tools."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
import time
import uuid

from .. import config
from ..backend.client import Backend
from ..capture import backfill
from ..capture.inbound import Inbound
from ..chatdb.reader import ChatDb
from ..config import Secret, Settings
from ..errors import EXIT_AUTH, EXIT_BACKEND, EXIT_CONFIG, EXIT_OK, ConfigError
from ..macos import keychain
from ..pidlock import PidLock, running_pid
from ..policy import HttpOutcome
from ..relay import Relay
from ..store import Store, open_store
from ..terminal import escape_controls
from ..tools import doctor
from ..tools.once import drain
from .common import settings_and_logs
from .state import format_duration


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.live:
        from ..tools.doctor import live

        live.report(args.wait, say=lambda line: print(line, flush=True))
        return EXIT_OK
    checks = doctor.run_checks()
    width = max(len(c.name) for c in checks)
    for check in checks:
        mark = "–" if check.skipped else ("✓" if check.ok else "✗")
        print(f"{mark} {check.name:<{width}}  {escape_controls(check.detail)}")
        if not check.ok and check.fix:
            print(f"  {'':<{width}}  fix: {check.fix}")
    code = doctor.exit_code(checks)
    failed = sum(1 for c in checks if not c.ok and not c.skipped)
    print("\nall checks passed" if code == EXIT_OK else f"\n{failed} check(s) failed")
    return code


# -- set-secret ---------------------------------------------------------------------------------
def _read_secret() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Webhook secret (input hidden): ").strip()
    return sys.stdin.readline().strip()


def _write_env_file(settings: Settings, value: str) -> str:
    path = settings.env_file or settings.state_dir / ".env"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [ln for ln in lines if not ln.strip().startswith(config.SECRET_VARIABLE + "=")]
    lines.append(f"{config.SECRET_VARIABLE}={value}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return str(path)


def _daemon_reads(agent: dict[str, str], settings: Settings) -> Settings | None:
    """What `run` would load under launchd (its environment, its working directory)."""
    try:
        return config.load(agent, cwd=settings.state_dir)
    except ConfigError:
        return None


def _verify(settings: Settings, secret: Secret) -> HttpOutcome:
    backend = Backend.from_settings(settings, lambda: secret, read_timeout=15.0)
    try:
        return backend.heartbeat()
    finally:
        backend.close()


def cmd_set_secret(args: argparse.Namespace) -> int:
    if args.generate:
        print(secrets.token_hex(32))
        print(
            "Rotation: set this value on the backend first, then store it here with "
            "`archety-relay set-secret` (paste it at the prompt).",
            file=sys.stderr,
        )
        return EXIT_OK
    settings = config.load(require_secret=False)
    value = _read_secret()
    if not value or any(ch.isspace() for ch in value):
        raise ConfigError("set-secret: the secret is empty or contains spaces")
    if (problem := config.secret_problem(value)) is not None:
        raise ConfigError(f"set-secret: nothing stored: {problem}")
    secret = Secret(value)
    verified: HttpOutcome | None = None
    if not args.no_verify:
        verified = _verify(settings, secret)
        if verified.status in (401, 403):
            print(f"❌ the backend rejected this secret (HTTP {verified.status}); nothing stored.")
            return EXIT_AUTH
    # What the daemon will read: the agent's environment (never the secret), in the state dir.
    agent = config.agent_environment(os.environ, settings.env_file)
    problem = keychain.set_secret(value)
    reads = _daemon_reads(agent, settings)
    stored = f"service {keychain.KEYCHAIN_SERVICE}, account {keychain.KEYCHAIN_ACCOUNT}"
    if problem is None and reads is not None and reads.secret.reveal() == value:
        print(f"✅ stored in the Keychain ({stored}), ends …{secret.last4() or '****'}")
    elif problem is None and reads is not None and reads.secret_source == ".env":
        # The Keychain has it, but the agent reads its .env first: that one must change too.
        where = _write_env_file(settings, value)
        print(f"✅ stored in the Keychain ({stored}); the relay reads {where} before the")
        print("   Keychain, so it was updated there too (mode 0600).")
    else:
        # A keyring can accept a value and keep nothing.
        why = problem or "the relay would not read it back from the Keychain"
        where = _write_env_file(settings, value)
        again = _daemon_reads(agent, settings)
        if again is None or again.secret.reveal() != value:
            print(f"❌ {why}; wrote {where}, but the relay would still not read this secret.")
            print(f"   Check ARCHETY_ENV_FILE and {settings.state_dir}/.env, then try again.")
            return EXIT_CONFIG
        print(f"Keychain unavailable: {why}. Wrote {where} (mode 0600) instead.")
    if settings.secret_source == "environment":
        print(
            "⚠ RELAY_WEBHOOK_SECRET is also exported in this shell, which wins here (not for "
            "the LaunchAgent): unset it."
        )
    if verified is None:
        print("not verified (--no-verify)")
    elif verified.ok:
        print(f"✅ the backend accepts it (heartbeat HTTP {verified.status})")
    else:
        print(f"⚠ stored, but the backend could not be asked: {verified.summary()}")
        return EXIT_BACKEND
    if running_pid(settings.state_dir):
        print(
            "The running relay picks it up at its next probe; to apply it now: "
            "launchctl kill HUP gui/$(id -u)/com.archety.relay"
        )
    return EXIT_OK


# -- test-message -------------------------------------------------------------------------------
def cmd_test_message(args: argparse.Namespace) -> int:
    settings = settings_and_logs(args)
    backend = Backend.from_settings(settings)
    try:
        health = backend.heartbeat()
        if not health.ok:
            return _test_failed("health check", health)
        sender = f"archety-relay-test@{settings.agent_id}"
        guid = f"relay-test-{uuid.uuid4()}"
        body = {
            "chat_guid": f"iMessage;-;{sender}",
            "mode": "direct",
            "sender": sender,
            "text": args.text,
            "timestamp": int(time.time()),
            "participants": [sender],
            "message_guid": guid,
        }
        outcome = backend.post_message(json.dumps(body).encode(), guid)
    finally:
        backend.close()
    if not outcome.ok:
        return _test_failed("test message", outcome)
    print(f"✅ test message accepted: {outcome.summary()} (health check {health.summary()})")
    if outcome.body:
        print(f"   backend answered: {escape_controls(outcome.body[:300])}")
    return EXIT_OK


def _test_failed(what: str, outcome: HttpOutcome) -> int:
    if outcome.status in (401, 403):
        print(
            f"❌ {what}: HTTP {outcome.status}, the backend rejected RELAY_WEBHOOK_SECRET "
            "(archety-relay set-secret)"
        )
        return EXIT_AUTH
    print(f"❌ {what}: {outcome.summary()}")
    return EXIT_BACKEND


# -- backfill -----------------------------------------------------------------------------------
def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // total if total else width
    print(
        f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
        end="",
        file=sys.stderr,
        flush=True,
    )


def cmd_backfill(args: argparse.Namespace) -> int:
    settings = settings_and_logs(args)
    now = time.time()
    store = open_store(settings.state_dir)
    try:
        inbound = Inbound(settings, store)  # the live path's rules, persona and chat context
        with ChatDb(settings.chat_db) as chatdb:
            found = backfill.plan(chatdb, store, args.since, now, inbound.holds_back)
        total = len(found.messages)
        print(
            f"{total} message(s) from the last {format_duration(args.since)} would be sent "
            f"({found.already_known} already sent, queued or held back, "
            f"{len(found.held_back)} held back by the backend's filter rules, "
            f"{sum(found.skipped.values())} skipped by the forwarding rules)."
        )
        if total == 0:
            return EXIT_OK
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigError("backfill: add --yes to confirm when not at a terminal")
            if input("Send them? [y/N] ").strip().lower() not in ("y", "yes"):
                print("nothing sent")
                return EXIT_OK
        queued = backfill.enqueue(store, found, time.time(), inbound.admit)
        if not queued:
            print("nothing sent: the filter rules held every message back")
            return EXIT_OK
        return _deliver_backfill(settings, store, queued)
    finally:
        store.close()


def _deliver_backfill(settings: Settings, store: Store, guids: list[str]) -> int:
    total = len(guids)
    if running_pid(settings.state_dir):
        print("queued; the running relay is delivering them")
        deadline = time.monotonic() + 300
        pending = total
        while pending and time.monotonic() < deadline:
            pending = store.pending(guids)
            _progress(total - pending, total)
            time.sleep(0.5)
        print(file=sys.stderr)
        if pending:
            print(f"{pending} still queued; `archety-relay status` shows why")
            return EXIT_BACKEND
        return EXIT_OK
    lock = PidLock(settings.state_dir)
    lock.acquire()
    try:
        with ChatDb(settings.chat_db) as chatdb:
            relay = Relay(settings, chatdb, store)
            _progress(0, total)
            drained = drain(relay, lambda sent: _progress(min(sent, total), total))
            relay.backend.close()
        print(file=sys.stderr)
        if drained.stopped_by != "idle" or drained.failed is not None:
            why = drained.failed.summary() if drained.failed else drained.stopped_by
            print(f"stopped: {why}; the rest stays queued for the daemon")
            return EXIT_AUTH if drained.stopped_by == "auth_paused" else EXIT_BACKEND
        print(f"✅ {drained.delivered + drained.dead_lettered} message(s) delivered")
        return EXIT_OK
    finally:
        lock.release()
