"""`doctor --live`'s iMessage lines: Messages.app as the keeper sees it, the relay's alerts,
what became of the persona's messages of the last day, and the daemon's own /healthz."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from ... import macos
from ...capture.outcomes import WINDOW_SECONDS, reason
from ...chatdb.rows import apple_date
from ...config import Settings
from ...macos import messages_process
from ...store import OUTBOX_FILE, open_store

Line = tuple[str, str]


def lines(settings: Settings, platform: str | None = None) -> list[Line]:
    return [
        ("messages", _messages(platform)),
        *_state(settings),
        ("healthz", _healthz(settings.metrics_port)),
    ]


def _messages(platform: str | None) -> str:
    if not macos.is_macos(platform):
        return "not macOS"
    running = messages_process.is_running(platform)
    if running is None:
        return "could not tell whether Messages.app runs (pgrep failed)"
    if not running:
        return "Messages.app is NOT running (the daemon starts it within 30 s)"
    account = messages_process.imessage_account(platform)
    if not account.known:
        return f"running; the iMessage account could not be read: {account.detail}"
    state = "signed in" if account.signed_in else "SIGNED OUT or disabled"
    return f"running; iMessage account {state} ({account.detail})"


def _state(settings: Settings) -> list[Line]:
    if not (settings.state_dir / OUTBOX_FILE).exists():
        return [("alerts", "no state file yet (the daemon has not run)")]
    store = open_store(settings.state_dir)
    try:
        alerts = store.active_alerts()
        summary = store.outcome_summary(apple_date(time.time() - WINDOW_SECONDS))
    finally:
        store.close()
    raised = ", ".join(
        f"{kind} since {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime(a.get('since') or 0))}"
        for kind, a in sorted(alerts.items())
        if isinstance(a, dict)
    )
    failed = ", ".join(f"{n} {reason(int(c))}" for c, n in summary["errors"].items())
    sent = (
        f"{summary['delivered']} delivered, {summary['pending']} no receipt yet, "
        f"{summary['not_delivered']} not delivered" + (f" ({failed})" if failed else "")
    )
    return [("alerts", raised or "none"), ("sent 24h", sent)]


def _healthz(port: int) -> str:
    if not port:
        return "off (ARCHETY_METRICS_PORT=0)"
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            code, body = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read()
    except OSError as exc:
        return f"no answer at {url} (daemon not running, or another port): {exc}"
    try:
        checks = json.loads(body).get("checks", {})
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return f"HTTP {code} (not the relay's answer?)"
    failing = [name for name, check in checks.items() if not check.get("ok")]
    return f"HTTP {code} {status}" + (f": {', '.join(failing)}" if failing else "")
