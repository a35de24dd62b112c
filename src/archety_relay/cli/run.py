"""`archety-relay run` (the daemon) and `archety-relay --once` (a manual test)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

import structlog

from ..chatdb.reader import ChatDb
from ..pidlock import PidLock
from ..policy import HttpOutcome
from ..relay import Relay
from ..store import open_store
from ..tools.once import OnceReport, run_once
from .common import reload_secret, settings_and_logs

log = structlog.get_logger("archety_relay.cli")


class _Flags:
    """Set by signal handlers, read by the main loop: a handler does nothing else."""

    stop = False
    reload = False
    signal_name = ""


def cmd_run(args: argparse.Namespace) -> int:
    from ..daemon import Daemon  # the watcher and threads are the daemon's alone

    settings = settings_and_logs(args)
    lock = PidLock(settings.state_dir)
    lock.acquire()
    store = open_store(settings.state_dir, repair=True)
    daemon = Daemon(settings, store, reload_secret=reload_secret)
    flags = _Flags()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        flags.stop = True
        flags.signal_name = signal.Signals(signum).name

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        flags.reload = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    daemon.start()
    while not flags.stop:
        time.sleep(0.1)
        if flags.reload:
            flags.reload = False
            log.info("reload_requested", signal="SIGHUP")
            daemon.reload()
    log.info("shutdown_requested", signal=flags.signal_name)
    if daemon.shutdown():
        store.close()
    lock.release()
    return 0


def cmd_once(args: argparse.Namespace) -> int:
    settings = settings_and_logs(args)
    lock = PidLock(settings.state_dir)
    lock.acquire()
    try:
        store = open_store(settings.state_dir, repair=True)
        with ChatDb(settings.chat_db) as chatdb:
            relay = Relay(settings, chatdb, store)
            try:
                report = run_once(relay)
            finally:
                relay.backend.close()
                store.close()
    finally:
        lock.release()
    _print_report(report, settings.backend_url)
    return report.exit_code


def _describe(outcome: HttpOutcome | None) -> str:
    return "not attempted" if outcome is None else outcome.summary()


def _print_report(report: OnceReport, backend_url: str) -> None:
    out = sys.stdout
    health_ok = report.health is not None and report.health.ok
    mark = "✅" if report.exit_code == 0 else "❌"
    print(f"{mark} archety-relay --once against {backend_url}", file=out)
    print(f"  health check : {_describe(report.health)}", file=out)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())) or "none"
    print(
        f"  read         : {report.read} rows ({report.enqueued} queued; skipped: {skipped})",
        file=out,
    )
    print(f"  delivered    : {report.delivered}", file=out)
    failed = report.dead_lettered + (1 if report.failed else 0)
    detail = []
    if report.dead_lettered:
        detail.append(f"{report.dead_lettered} dead-lettered (see `archety-relay status`)")
    if report.failed:
        detail.append(f"stopped at {_describe(report.failed)}")
    print(f"  failed       : {failed}" + (f" ({'; '.join(detail)})" if detail else ""), file=out)
    print(f"  still queued : {report.still_queued}", file=out)
    print(f"  sync         : {_describe(report.sync)}", file=out)
    if report.outgoing:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(report.outgoing.items()))
        print(f"  outgoing     : {counts}", file=out)
    status = None
    for outcome in (report.health, report.failed):
        if outcome is not None and outcome.status in (401, 403):
            status = outcome.status
    if status:
        print(
            f"  → the backend rejected RELAY_WEBHOOK_SECRET (HTTP {status}). Check the secret "
            "(`archety-relay set-secret`, .env or the environment).",
            file=out,
        )
    elif not health_ok:
        print(
            "  → the backend did not answer the health check; messages stay queued and go "
            "out when it is back.",
            file=out,
        )
