"""`status`, `retry-dead`, `purge-dead`: what the relay's state says, for people and scripts."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from ..capture import detection
from ..capture.outcomes import WINDOW_SECONDS as OUTCOME_WINDOW_SECONDS
from ..capture.outcomes import reason
from ..chatdb.reader import ChatDb
from ..chatdb.rows import apple_date
from ..config import Settings
from ..errors import RelayError
from ..model import utc_iso
from ..pidlock import running_pid
from ..redact import mask_identifiers, scrub_body
from ..store import OUTBOX_FILE, Store, open_store
from ..terminal import escape_controls
from .common import settings_and_logs

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
DEAD_LETTERS_SHOWN = 20
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 2h or 7d, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _iso(ts: float | None) -> str | None:
    return utc_iso(ts) if ts else None


def _open_existing(settings: Settings) -> Store | None:
    if not (settings.state_dir / OUTBOX_FILE).exists():
        return None
    return open_store(settings.state_dir)


def collect_status(settings: Settings, now: float) -> dict[str, Any]:
    report: dict[str, Any] = {
        "daemon_pid": running_pid(settings.state_dir),
        "state_dir": str(settings.state_dir),
        "chat_db": str(settings.chat_db),
        "backend": settings.backend_url,
        "metrics_url": (
            f"http://127.0.0.1:{settings.metrics_port}/metrics" if settings.metrics_port else None
        ),
    }
    report["daemon_running"] = report["daemon_pid"] is not None
    noticed = detection.read(settings.state_dir)
    report["detection"] = (
        {k: v for k, v in noticed.items() if k != "recent"} if noticed is not None else None
    )
    try:
        with ChatDb(settings.chat_db) as chatdb:
            report["chatdb_max_rowid"] = chatdb.max_rowid()
        report["chatdb_error"] = None
    except RelayError as exc:
        report["chatdb_max_rowid"] = None
        report["chatdb_error"] = exc.message
    store = _open_existing(settings)
    if store is None:
        report.update(
            in_flight=[],
            cursor_rowid=None,
            queue_depth=0,
            oldest_undelivered_age_s=None,
            dead_letters=[],
            last_delivery_at=None,
            last_error=None,
            auth_state=None,
            outgoing={},
            files_waiting=0,
            rules=[],
            skipped_backfill=0,
            state_reset=None,
            alerts=[],
            delivery_outcomes_24h=None,
        )
        return report
    try:
        cursor = store.cursor()
        stats = store.stats()
        meta = store.meta()
        dead = store.dead_letters()
        outgoing = store.outgoing_counts()
        files_waiting = store.files_waiting()
        rules = [_rule_summary(source) for source in store.rules()]
        alerts = store.active_alerts()
        outcomes = store.outcome_summary(apple_date(now - OUTCOME_WINDOW_SECONDS))
    finally:
        store.close()
    last_delivery = meta.get("last_delivery_at")
    in_flight = _in_flight(meta.get("in_flight"), now) if report["daemon_running"] else []
    report.update(
        in_flight=in_flight,
        cursor_rowid=cursor.rowid if cursor else None,
        queue_depth=stats.depth,
        oldest_undelivered_age_s=(
            round(now - stats.oldest_enqueued_at, 1) if stats.oldest_enqueued_at else None
        ),
        dead_letters=[
            {
                "message_guid": d.message_guid,
                "status": d.status,
                "attempts": d.attempts,
                "dead_at": _iso(d.dead_at),
                # Scrubbed whole, then cut: rows stored before the scrub may echo message text.
                "response": scrub_body(d.response or "", (settings.secret.reveal(),))[:200],
            }
            for d in dead
        ],
        last_delivery_at=_iso(float(last_delivery)) if last_delivery else None,
        last_error=meta.get("last_error"),
        auth_state=meta.get("auth_state", "ok"),
        outgoing=outgoing,
        files_waiting=files_waiting,
        rules=rules,
        # iCloud history not posted (see lateness): a jump here is a restore, not a fault.
        skipped_backfill=int(meta.get("count_backfill") or 0),
        state_reset=_state_reset(meta.get("state_reset")),
        alerts=[
            {"kind": kind, "since": _iso(a.get("since")), **(a.get("details") or {})}
            for kind, a in sorted(alerts.items())
            if isinstance(a, dict)
        ],
        # What became of the persona's messages of the last day (receipts, late failures).
        delivery_outcomes_24h={
            **{k: v for k, v in outcomes.items() if k != "errors"},
            "not_delivered_by_reason": {
                reason(int(code)): n for code, n in outcomes["errors"].items()
            },
        },
    )
    return report


def _state_reset(recorded: str | None) -> dict[str, Any] | None:
    """When the state file was found damaged and replaced, where it went, what was carried."""
    try:
        reset = json.loads(recorded) if recorded else None
    except ValueError:
        return None
    if not isinstance(reset, dict):
        return None
    at = reset.get("at")
    return {**reset, "at": _iso(float(at)) if isinstance(at, (int, float)) else None}


def _rule_summary(source: dict[str, Any]) -> dict[str, Any]:
    """A stored rule as `status` shows it (set_rule upserts them by name)."""
    config = source.get("rule_config") or {}
    return {
        "name": config.get("name"),
        "rule_type": source.get("rule_type"),
        "enabled": config.get("enabled", True) is not False,
        "conditions": config.get("conditions", []),
    }


def _in_flight(published: str | None, now: float) -> list[dict[str, Any]]:
    """What the daemon has at the backend (written at most a second ago), longest first."""
    try:
        entries = json.loads(published) if published else []
    except ValueError:
        return []
    return [
        {
            "chat_guid": mask_identifiers(str(e.get("chat_guid", ""))),
            "message_guid": str(e.get("message_guid", "")),
            "for_s": round(max(0.0, now - float(e.get("since", now))), 1),
        }
        for e in entries
        if isinstance(e, dict)
    ]


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_and_logs(args, require_secret=False)
    report = collect_status(settings, time.time())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    pid = report["daemon_pid"]
    lines = [
        f"daemon        : {'running (pid ' + str(pid) + ')' if pid else 'not running'}",
        f"backend       : {report['backend']}",
        f"chat.db       : {report['chat_db']}",
        f"cursor        : ROWID {report['cursor_rowid']} of chat.db MAX(ROWID) "
        f"{report['chatdb_max_rowid'] if report['chatdb_error'] is None else 'unreadable'}",
    ]
    if report["chatdb_error"]:
        lines.append(f"chat.db error : {report['chatdb_error']}")
    age = report["oldest_undelivered_age_s"]
    lines += [
        f"queue         : {report['queue_depth']} undelivered"
        + (f", oldest {age:.0f}s old" if age is not None else ""),
        f"in flight     : {len(report['in_flight'])}",
    ]
    for flying in report["in_flight"]:
        lines.append(
            f"  - {flying['chat_guid']} {flying['message_guid']} for {flying['for_s']:.0f}s"
        )
    lines += [f"dead letters  : {len(report['dead_letters'])}"]
    # The newest few: thousands of lines would push everything else off the screen.
    shown = report["dead_letters"][-DEAD_LETTERS_SHOWN:]
    if len(report["dead_letters"]) > len(shown):
        hidden = len(report["dead_letters"]) - len(shown)
        lines.append(f"  ({hidden} older not shown; `status --json` lists them all)")
    for dead in shown:
        lines.append(
            f"  - {dead['message_guid']} HTTP {dead['status']} at {dead['dead_at']}: "
            f"{dead['response'][:80]}"
        )
    lines += [
        f"last delivery : {report['last_delivery_at'] or 'never'}",
        f"last error    : {report['last_error'] or 'none'}",
        f"auth          : {report['auth_state'] or 'unknown'}",
        f"state reset   : {_reset_line(report['state_reset'])}",
        f"backfill      : {report['skipped_backfill']} old rows skipped (iCloud history)",
        "outgoing      : "
        + (", ".join(f"{n} {k}" for k, n in sorted(report["outgoing"].items())) or "none"),
        f"files waiting : {report['files_waiting']} (pictures and files the persona sends)",
        f"rules         : {len(report['rules']) or 'none'}",
        f"detection     : {_detection_line(report['detection'])}",
        f"alerts        : {len(report['alerts']) or 'none'}",
    ]
    for alert in report["alerts"]:
        lines.append(f"  - {alert['kind']} since {alert['since']}")
    lines += [
        f"sent, last 24h: {_outcomes_line(report['delivery_outcomes_24h'])}",
        f"metrics       : {report['metrics_url'] or 'off (ARCHETY_METRICS_PORT=0)'}",
    ]
    for rule in report["rules"]:
        state = "enabled" if rule["enabled"] else "disabled"
        lines.append(f"  - {rule['name']} ({rule['rule_type']}, {state})")
    # Everything above may carry text from outside (answers, errors, chat.db guids).
    print("\n".join(escape_controls(line) for line in lines))
    return 0


def _outcomes_line(outcomes: dict[str, Any] | None) -> str:
    """The persona's messages of the last day: delivered, waiting for a receipt, failed."""
    if not outcomes:
        return "nothing watched yet"
    failed = ", ".join(f"{n} {r}" for r, n in sorted(outcomes["not_delivered_by_reason"].items()))
    return (
        f"{outcomes['delivered']} delivered, {outcomes['pending']} without a receipt yet, "
        f"{outcomes['not_delivered']} not delivered" + (f" ({failed})" if failed else "")
    )


def _reset_line(reset: dict[str, Any] | None) -> str:
    if not reset:
        return "never"
    carried = ", ".join(f"{n} {t}" for t, n in sorted((reset.get("salvaged") or {}).items()))
    return (
        f"{reset.get('at')}: the damaged file is kept at {reset.get('moved_to')}; "
        f"carried over: {carried or 'nothing readable'}"
    )


def _detection_line(noticed: dict[str, Any] | None) -> str:
    """How fast recent messages were noticed: on a Mac, whether file events work at all."""
    if not noticed or not noticed.get("messages"):
        return "no messages captured yet"
    by = ", ".join(f"{k} {n}" for k, n in sorted(noticed.get("noticed_by", {}).items()))
    return (
        f"{noticed.get('watcher')}; last {noticed['messages']} messages p50 "
        f"{noticed['p50_ms']:g} ms, p99 {noticed['p99_ms']:g} ms from their date ({by})"
    )


def cmd_retry_dead(args: argparse.Namespace) -> int:
    settings = settings_and_logs(args, require_secret=False)
    store = _open_existing(settings)
    moved = store.retry_dead(time.time()) if store else 0
    if store:
        store.close()
    print(
        f"re-queued {moved} dead letter(s)"
        + ("; the running daemon sends them within a minute" if moved else ""),
        file=sys.stdout,
    )
    return 0


def cmd_skip_head(args: argparse.Namespace) -> int:
    """Without arguments: the oldest chat head that has already failed (what blocks a chat)."""
    settings = settings_and_logs(args, require_secret=False)
    store = _open_existing(settings)
    skipped = (
        store.skip(time.time(), message_guid=args.message, chat_guid=args.chat) if store else None
    )
    if store:
        store.close()
    if skipped is None:
        print(
            "nothing to skip: no queued message matches"
            + ("" if args.message or args.chat else " (none has failed yet)")
        )
        return 1
    print(
        f"moved {escape_controls(skipped)} to the dead letters; its chat goes on with the next message "
        "(`archety-relay retry-dead` puts it back in its place)"
    )
    return 0


def cmd_purge_dead(args: argparse.Namespace) -> int:
    settings = settings_and_logs(args, require_secret=False)
    store = _open_existing(settings)
    removed = store.purge_dead(time.time() - args.older_than) if store else 0
    if store:
        store.close()
    print(f"purged {removed} dead letter(s) older than {args.older_than:g}s")
    return 0
