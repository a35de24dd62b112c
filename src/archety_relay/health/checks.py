"""`/healthz`: a snapshot of the relay's state → an HTTP status and `{status, checks}` (pure).

200 `ok` when everything works; 200 `degraded` when the relay works but something needs a look
(no incoming message for a while, dead letters); 503 `failing` when it cannot relay at all: the
backend rejects the secret, chat.db cannot be read, the backend has not answered for
BACKEND_DOWN_SECONDS, or Messages.app is not running or the iMessage account is signed out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model import utc_iso
from .tally import TallyView

# A blip (a redeploy, a router restart) is not an outage: only this long without an answer is.
BACKEND_DOWN_SECONDS = 300.0

INBOUND_SILENCE = "inbound_silence"
MESSAGES_NOT_RUNNING = "messages_not_running"
MESSAGES_UNRESPONSIVE = "messages_unresponsive"
IMESSAGE_SIGNED_OUT = "imessage_signed_out"
# Alerts that mean no message can go out or come in: /healthz answers 503 while one is up.
FAILING_ALERTS = (MESSAGES_NOT_RUNNING, IMESSAGE_SIGNED_OUT)


@dataclass(frozen=True)
class Snapshot:
    """What the relay knows at one moment (wall-clock `now`), read without changing anything."""

    now: float
    version: str
    agent_id: str
    queue_depth: int
    oldest_enqueued_at: float | None
    dead_letters: int
    events_pending: int
    pause_reason: str | None  # "auth_401", "rejected_404" … (see delivery.lanes)
    chatdb_ok: bool
    last_inbound_at: float | None
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    tally: TallyView | None = None


def _iso(value: object) -> str | None:
    return utc_iso(value) if isinstance(value, (int, float)) else None


def backend_down_for(snapshot: Snapshot) -> float:
    """Seconds since the backend last failed to answer, without an answer since (0: it answers)."""
    since = snapshot.tally.backend_failed_since if snapshot.tally else None
    return max(0.0, snapshot.now - since) if since is not None else 0.0


def healthz(snapshot: Snapshot) -> tuple[int, dict[str, Any]]:
    secret_rejected = bool(snapshot.pause_reason and snapshot.pause_reason.startswith("auth_"))
    down_for = backend_down_for(snapshot)
    alerts = snapshot.alerts
    checks: dict[str, dict[str, Any]] = {
        "secret": {"ok": not secret_rejected, "pause_reason": snapshot.pause_reason},
        "chat_db": {"ok": snapshot.chatdb_ok},
        "backend": {
            "ok": down_for < BACKEND_DOWN_SECONDS,
            "unreachable_for_s": round(down_for, 1) if down_for else 0,
        },
        "messages_app": {"ok": MESSAGES_NOT_RUNNING not in alerts},
        "imessage_account": {"ok": IMESSAGE_SIGNED_OUT not in alerts},
        "inbound": {
            "ok": INBOUND_SILENCE not in alerts,
            "last_inbound_at": _iso(snapshot.last_inbound_at),
        },
        "dead_letters": {"ok": snapshot.dead_letters == 0, "count": snapshot.dead_letters},
    }
    failing = ("secret", "chat_db", "backend", "messages_app", "imessage_account")
    if any(not checks[name]["ok"] for name in failing):
        status, code = "failing", 503
    elif any(not check["ok"] for check in checks.values()) or alerts:
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    body = {
        "status": status,
        "checks": checks,
        "alerts": {
            kind: {"since": _iso(a.get("since")) if isinstance(a, dict) else None}
            for kind, a in sorted(alerts.items())
        },
    }
    return code, body
