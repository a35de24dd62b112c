"""The only module that starts long-lived threads: it repeats the relay's steps until told to stop.

    capture thread   waits for a file event or the poll interval, then `capture_step`, and
                     `changes_step` (edits, unsends, reads) whenever chat.db changed
    sender thread    hands each chat's next message to a free lane (`next_deliveries`), then
                     waits for the capture thread, a lane that finished, or a deadline
    lane threads     ARCHETY_MAX_IN_FLIGHT of them; each makes one attempt at a time
                     (`deliver_item`), so different chats wait on the backend side by side
    timer thread     heartbeat every ARCHETY_HEARTBEAT_INTERVAL, sync every ARCHETY_SYNC_INTERVAL,
                     and within SYNC_DEBOUNCE_SECONDS of a new conversation event or a send's
                     outcome (`sync_soon`)
    dispatch thread  sends due replies and commanded messages through Messages.app; each send
                     and each fetch of a file to send runs on a short-lived daemon thread of
                     its own (outbound.underway, outbound.fetches), so one that hangs holds only
                     its chat, and shutdown never waits for it
    photos thread    uploads pictures that landed after their message went (`photos_step`);
                     what it reports also asks for a prompt sync (`sync_soon`)
    health thread    every HEALTH_INTERVAL_SECONDS: Messages.app running and signed in (macOS),
                     incoming messages still arriving (`health_step`); alerts ask for a sync
    metrics thread   `/metrics` and `/healthz` on 127.0.0.1:ARCHETY_METRICS_PORT (health.server);
                     its handlers only read `relay.health_snapshot()`
    watchdog         sets the capture thread's wake event (see watcher)

No thread dies silently or holds up shutdown: each catches, logs (at most once a minute for a
repeating error, plus a "recovered" line), backs off, and waits with `stop.wait(timeout)`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from .capture import detection
from .chatdb import watcher
from .chatdb.reader import ChatDb
from .config import Secret, Settings
from .error_log import ErrorLog
from .errors import ChatDbUnavailable
from .health import server as health_server
from .outbound.dispatch import Sender
from .relay import Relay
from .store import QueuedItem, Store

log = structlog.get_logger("archety_relay.daemon")

# Another process (retry-dead, backfill) may queue rows; an idle sender looks every few seconds.
IDLE_RECHECK_SECONDS = 5.0
CHAT_JOIN_RECHECK_SECONDS = 0.1
SETTLE_WINDOW_SECONDS = 0.25
SETTLE_STEP_SECONDS = 0.002
SHUTDOWN_GRACE_SECONDS = 3.0
# A watcher that cannot start is retried after 5 s, doubling up to 5 minutes.
WATCHER_RETRY_SECONDS = 5.0
WATCHER_RETRY_MAX_SECONDS = 300.0
PRUNE_INTERVAL_SECONDS = 3600.0
# A new conversation event starts a sync this soon; events within it share that sync.
SYNC_DEBOUNCE_SECONDS = 1.0
# `status` reads what is in flight from the state file, written at most once a second: look
# again this soon when a change is still to be written.
IN_FLIGHT_PUBLISH_SECONDS = 0.5
# Messages.app and inbound silence are looked at this often (a pgrep and, on a Mac, one
# osascript of a read-only property).
HEALTH_INTERVAL_SECONDS = 30.0


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        reload_secret: Callable[[], Secret] | None = None,
        on_ready: Callable[[], None] | None = None,
        send: Sender | None = None,
        platform: str | None = None,
    ) -> None:
        self.settings = settings
        self.platform = platform  # which watcher to use: tests choose macOS's on Linux
        self.chatdb = ChatDb(settings.chat_db)
        self.relay = Relay(settings, self.chatdb, store, reload_secret=reload_secret, send=send)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.outbox_ready = threading.Event()
        self.outgoing_ready = threading.Event()
        self.sync_soon = threading.Event()
        self.relay.outbound.notify = self.outgoing_ready.set
        self.relay.outbound.reported = self.sync_soon.set
        self._threads: list[threading.Thread] = []
        self._observer: Any = None
        self._watcher_failures = 0
        self._watcher_retry_at = 0.0
        self._wal_inode: int | None = None
        self.watcher_retry_seconds = WATCHER_RETRY_SECONDS
        self._ready = False
        self._on_ready = on_ready
        self.metrics: health_server.MetricsServer | None = None
        self.detection = detection.Recorder(
            settings.state_dir, watcher.observer_kind(platform) + " (not started)"
        )

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        log.info(
            "relay_starting",
            backend=self.settings.backend_url,
            agent_id=self.settings.agent_id,
            chat_db=str(self.settings.chat_db),
            secret_source=self.settings.secret_source,
        )
        for name, target in (
            ("capture", self._capture_loop),
            ("sender", self._sender_loop),
            ("timer", self._timer_loop),
            ("dispatch", self._dispatch_loop),
            ("photos", self._photos_loop),
            ("health", self._health_loop),
        ):
            thread = threading.Thread(target=target, name=f"relay-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.settings.metrics_port:
            # A port in use is one warning inside `bind`, and the relay goes on without it.
            self.metrics = health_server.bind(
                self.settings.metrics_port, lambda: self.relay.health_snapshot(time.time())
            )
            if self.metrics is not None:
                threading.Thread(
                    target=self.metrics.serve, name="relay-metrics", daemon=True
                ).start()

    def shutdown(self) -> bool:
        """Stop every loop; the request in flight may finish. True when all stopped in time."""
        self.stop.set()
        self.wake.set()
        self.outbox_ready.set()
        self.outgoing_ready.set()
        self.sync_soon.set()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._observer is not None:
            self._observer.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.detection.flush(time.monotonic(), force=True)
        clean = not any(t.is_alive() for t in self._threads)
        if clean:
            self.chatdb.close()
            self.relay.backend.close()
        log.info("relay_stopped", clean=clean)
        return clean

    def reload(self) -> None:
        self.relay.reload_secret_now()
        self.outbox_ready.set()

    # -- loops ------------------------------------------------------------------------------
    def _ensure_watcher(self, now: float) -> None:
        """Start the file watcher, or retry it with a capped backoff, logging once: without
        it the timer check still finds every message, only later."""
        if self._observer is not None and not self._watcher_needs_restart():
            return
        if now < self._watcher_retry_at:
            return
        if not self.settings.chat_db.parent.is_dir():
            return
        kind = watcher.observer_kind(self.platform)
        try:
            self._observer = watcher.watch(self.settings.chat_db, self.wake, platform=self.platform)
        except Exception as exc:
            self._watcher_failures += 1
            delay = min(
                WATCHER_RETRY_MAX_SECONDS,
                self.watcher_retry_seconds * 2 ** min(self._watcher_failures - 1, 10),
            )
            self._watcher_retry_at = now + delay
            self.detection.watcher = f"{kind} (unavailable)"
            if self._watcher_failures == 1:
                log.warning(
                    "watcher_unavailable",
                    observer=kind,
                    error=f"{type(exc).__name__}: {exc}",
                    fallback="timer_checks_only",
                    poll_interval_s=self.settings.poll_interval,
                )
            return
        self.detection.watcher = kind
        self._wal_inode = watcher.wal_inode(self.settings.chat_db)
        if self._watcher_failures:
            log.info("watcher_recovered", observer=kind, failures=self._watcher_failures)
        self._watcher_failures = 0

    def _watcher_needs_restart(self) -> bool:
        """Stop a watcher that no longer sees everything (see watcher.restart_reason)."""
        kind = watcher.observer_kind(self.platform)
        wal_now = watcher.wal_inode(self.settings.chat_db)
        reason = watcher.restart_reason(
            kind, watcher.alive(self._observer), self._wal_inode, wal_now
        )
        if wal_now is not None:
            self._wal_inode = wal_now
        if reason is None:
            return False
        log.warning("watcher_restarted", observer=kind, reason=reason)
        with contextlib.suppress(Exception):
            self._observer.stop()
        self._observer = None
        return True

    def _announce_ready(self) -> None:
        self._ready = True
        log.info(
            "relay_ready",
            watching=str(self.settings.chat_db.parent),
            watcher=self.detection.watcher,
            poll_interval_s=self.settings.poll_interval,
        )
        if self._on_ready:
            self._on_ready()

    def _capture_loop(self) -> None:
        errors = ErrorLog("capture_failed", log)
        holding = False
        # A failed capture leaves rows unread although data_version has been seen: retry it
        # without waiting for another change to chat.db (a full disk that frees up, say).
        retry = changes_due = False
        settle_until = 0.0
        wait = 0.0
        while not self.stop.is_set():
            woke = self.wake.wait(wait)
            self.wake.clear()
            if self.stop.is_set():
                break
            try:
                changed = self.chatdb.changed()
                read = 0
                if woke or holding or retry or changed:
                    # What noticed the rows this capture finds (shown by `status`).
                    via = (
                        "file_event"
                        if woke or time.monotonic() < settle_until
                        else "held"
                        if holding
                        else "retry"
                        if retry
                        else "timer"
                    )
                    result = self.relay.capture_step(time.time())
                    captured_at = time.time()
                    for date in result.dates:
                        self.detection.record(via, captured_at - date)
                    retry = False
                    holding, read = result.holding, result.read
                    if result.enqueued:
                        self.outbox_ready.set()
                    if result.events:
                        self.sync_soon.set()
                    if read:
                        log.debug(
                            "captured",
                            read=read,
                            enqueued=result.enqueued,
                            skipped=dict(result.skipped),
                        )
                changes_due = changes_due or changed
                if changes_due:
                    if self.relay.changes_step(time.time()).emitted:
                        self.sync_soon.set()
                    changes_due = False
                # Ready only after the first capture placed the cursor: a message written
                # after `relay_ready` must never be mistaken for history. Ready with or
                # without a watcher: the timer check finds every message either way.
                now = time.monotonic()
                self._ensure_watcher(now)
                if not self._ready:
                    self._announce_ready()
                self.detection.flush(now)
                errors.ok(now)
                if woke and not read:
                    # The WAL write that woke us lands a moment before the commit becomes
                    # visible (the wal-index lives in mmapped -shm, which raises no event):
                    # look again every few ms for a short while instead of a whole poll later.
                    settle_until = now + SETTLE_WINDOW_SECONDS
                if holding:
                    wait = CHAT_JOIN_RECHECK_SECONDS
                elif now < settle_until:
                    wait = SETTLE_STEP_SECONDS
                else:
                    wait = self.settings.poll_interval
            except ChatDbUnavailable as exc:
                errors.event, retry = "chatdb_unavailable", True
                wait = errors.failed(exc, time.monotonic())
            except Exception as exc:
                errors.event, retry = "capture_failed", True
                wait = errors.failed(exc, time.monotonic())

    def _sender_loop(self) -> None:
        """Hand out work to the lanes. Lanes are plain daemon threads (not an executor's,
        which the interpreter joins at exit): a lane stuck on a slow answer never holds up
        shutdown, and its message simply stays queued for the next start."""
        errors = ErrorLog("delivery_loop_failed", log)
        lane_errors = ErrorLog("delivery_lane_failed", log)  # one for all lanes: one line a minute
        work: queue.SimpleQueue[QueuedItem | None] = queue.SimpleQueue()
        lanes = [
            threading.Thread(
                target=self._lane, args=(work, lane_errors), name=f"relay-lane-{n}", daemon=True
            )
            for n in range(self.settings.max_in_flight)
        ]
        for lane in lanes:
            lane.start()
        try:
            while not self.stop.is_set():
                try:
                    items, wait = self.relay.next_deliveries(time.monotonic())
                    for item in items:
                        work.put(item)
                    pending = self.relay.publish_in_flight(time.time())
                    errors.ok(time.monotonic())
                except Exception as exc:
                    self.stop.wait(errors.failed(exc, time.monotonic()))
                    continue
                timeout = wait if wait is not None else IDLE_RECHECK_SECONDS
                if pending:
                    timeout = min(timeout, IN_FLIGHT_PUBLISH_SECONDS)
                self.outbox_ready.wait(timeout)
                self.outbox_ready.clear()
        finally:
            for _ in lanes:
                work.put(None)

    def _lane(self, work: queue.SimpleQueue[QueuedItem | None], errors: ErrorLog) -> None:
        """Deliver what the sender hands over; after a delivery, go straight on with the next
        head that may go (oldest chat first, as the sender would pick), so a busy queue does
        not pay a hand-over between threads per message."""
        while True:
            item = work.get()
            while item is not None:
                if self.stop.is_set():
                    self.relay.lanes.finish(item.chat_guid)
                    return
                item = self._deliver_one(item, errors)
            if self.stop.is_set():
                return

    def _deliver_one(self, item: QueuedItem, errors: ErrorLog) -> QueuedItem | None:
        """One attempt; returns the lane's next message, or None to wait for the sender."""
        went = False
        try:
            delivery = self.relay.deliver_item(item, time.monotonic())
            went = delivery.kind in ("delivered", "dead_lettered")
            errors.ok(time.monotonic())
        except Exception as exc:
            # The message stays queued; its chat waits a moment before the next try.
            self.relay.lanes.hold_chat(
                item.chat_guid, time.monotonic(), errors.failed(exc, time.monotonic())
            )
        finally:
            self.relay.lanes.finish(item.chat_guid)
        if went and not self.stop.is_set():
            try:
                chosen, _ = self.relay.next_deliveries(time.monotonic(), limit=1)
            except Exception:
                chosen = []
            if chosen:
                # The sender thread may sleep while lanes go from one message to the next:
                # keep `status`'s view of what is in flight current (at most once a second).
                with contextlib.suppress(Exception):
                    self.relay.publish_in_flight(time.time())
                return chosen[0]
        self.outbox_ready.set()  # the sender decides what happens next
        return None

    def _dispatch_loop(self) -> None:
        errors = ErrorLog("dispatch_failed", log)
        while not self.stop.is_set():
            try:
                self.relay.outbound.automation_step(time.time())
                wait = self.relay.outbound.dispatch_step(time.time())
                errors.ok(time.monotonic())
            except Exception as exc:
                wait = errors.failed(exc, time.monotonic())
            timeout = IDLE_RECHECK_SECONDS if wait is None else min(wait, IDLE_RECHECK_SECONDS)
            self.outgoing_ready.wait(timeout)
            self.outgoing_ready.clear()

    def _timer_loop(self) -> None:
        errors = ErrorLog("timer_failed", log)
        next_heartbeat = next_sync = next_prune = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_prune:  # on its own timer: pruning must not wait for a good sync
                    next_prune = now + PRUNE_INTERVAL_SECONDS
                    if any((pruned := self.relay.store.prune(time.time())).values()):
                        log.info("state_pruned", **pruned)
                    self.relay.prune_staged(time.time())
                intervals = self.relay.intervals
                if now >= next_heartbeat:
                    next_heartbeat = now + intervals["heartbeat_interval"]
                    self.relay.heartbeat_step()
                if now >= next_sync:
                    next_sync = now + intervals["sync_interval"]
                    self.relay.sync_step(time.time())
                errors.ok(now)
            except Exception as exc:
                errors.failed(exc, now)
            self.sync_soon.wait(max(0.05, min(next_heartbeat, next_sync) - time.monotonic()))
            if self.sync_soon.is_set():
                self.sync_soon.clear()
                next_sync = min(next_sync, time.monotonic() + SYNC_DEBOUNCE_SECONDS)

    def _photos_loop(self) -> None:
        errors = ErrorLog("photos_failed", log)
        while not self.stop.is_set():
            wait: float | None
            try:
                events, wait = self.relay.photos_step(time.time())
                if events:
                    self.sync_soon.set()
                errors.ok(time.monotonic())
            except Exception as exc:
                wait = errors.failed(exc, time.monotonic())
            self.stop.wait(
                IDLE_RECHECK_SECONDS if wait is None else min(wait, IDLE_RECHECK_SECONDS)
            )

    def _health_loop(self) -> None:
        errors = ErrorLog("health_check_failed", log)
        while not self.stop.is_set():
            try:
                if self.relay.health_step(time.time()):
                    self.sync_soon.set()
                errors.ok(time.monotonic())
                wait = HEALTH_INTERVAL_SECONDS
            except Exception as exc:
                wait = max(errors.failed(exc, time.monotonic()), HEALTH_INTERVAL_SECONDS)
            self.stop.wait(wait)
