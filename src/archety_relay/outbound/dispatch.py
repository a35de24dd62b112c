"""Talking back: replies and backend commands, carried out through Messages.app, durably.

Everything outgoing is stored before it is acted on (see store.outgoing). `dispatch_step(now)`
sends what is due, the earliest bubble of each chat first, and reports each outcome as an event
that the next sync carries to the backend. `execute(action, now)` turns one sync command into
stored work plus an event (see executor).

A file the persona sends (issue #19) is an outgoing row like a bubble: when due it is fetched
(`backend.files`) on a thread of its own, so only its chat waits for it (`fetches`), staged
where Messages may read it (`staging`), passed to the send script as one more argument, and
counted sent only when chat.db has a from-me row in the chat carrying that file with error 0.
Its staged copy is removed once Messages shows a copy of its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from ..backend import commands, replies
from ..backend.client import Backend
from ..backend.commands import Action
from ..backend.files import FetchFailed
from ..chatdb.guids import Target, is_chat_guid, send_target, service_of
from ..chatdb.reader import ChatDb, SentRow
from ..config import Settings
from ..error_log import ErrorLog, retry_in
from ..macos import messages_app
from ..macos.messages_app import SendResult
from ..model import utc_iso
from ..store import NewOutgoing, Outgoing, QueuedItem, StagedFile, Store
from ..store.outgoing import FAILED, MISSED, PENDING, SENDING, SENT
from . import executor, retention, staging
from .fetches import Fetcher, Fetches, Fetching
from .permission import Permission
from .underway import Underway

log = structlog.get_logger("archety_relay.outbound")

MAX_SEND_ATTEMPTS = 3
SEND_RETRY_SECONDS = (2.0, 10.0)
# A send due longer ago than this (the Mac was off, sending was disabled) is reported, not sent.
MISSED_AFTER_SECONDS = 3600.0
# How far back to look in chat.db for a send that a crash interrupted (clocks, Messages' date).
RECOVERY_SLACK_SECONDS = 5.0
# How long Messages has to record a send osascript reported (imsg waits about as long).
CONFIRM_SECONDS = 3.0
CONFIRM_POLL_SECONDS = 0.05
# A send not recorded within CONFIRM_SECONDS is looked for once more this much later before it
# counts as failed, and never sent again meanwhile: the first send after Messages launches can
# be recorded well after 3 s (../shared/notes/macos.md, "Paper check": "First send after
# Messages launches"). Not measured on a Mac.
RELOOK_SECONDS = 30.0
UNCONFIRMED = "unconfirmed: "
NOT_RECORDED = "not_recorded"
IDLE_SECONDS = 30.0
# How long a step waits for one send before it serves the other chats (see underway): Messages
# answers in well under a second; a send that hangs goes on, and only its own chat waits.
SEND_WAIT_SECONDS = 5.0
# Sends under way at once, at most (a Messages that hangs every send costs this many osascripts).
MAX_SENDS_UNDER_WAY = 3
# While a send or a fetch is under way, the dispatcher looks again this often (it is also woken
# at once when it is back).
UNDER_WAY_RECHECK_SECONDS = 1.0
# How long a step waits for a fetch it started before it serves the other chats: not at all in
# the daemon (the fetch's thread wakes the dispatcher when it is back); `--once`, which has no
# later step, waits out the fetch's deadline.
FETCH_WAIT_SECONDS = 0.0

# (target, text) for a bubble; (target, "", staged path) for a file.
Sender = Callable[..., SendResult]


def _with_file(send: Sender, path: str) -> Sender:
    def send_file(target: Target, text: str) -> SendResult:
        return send(target, text, path)

    return send_file


class Outbound:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        chatdb: ChatDb,
        send: Sender = messages_app.send,
        fetch: Fetcher | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.chatdb = chatdb
        self.send = send
        self.fetch: Fetcher = fetch or Backend.from_settings(settings).fetch_file
        self.staging_root = staging.root_for(settings.chat_db)
        self.notify: Callable[[], None] = lambda: None
        # Called once a send's outcome (message_sent / _failed / _missed) is stored as an event:
        # the daemon syncs soon, so the backend learns it within seconds, not at the next
        # ARCHETY_SYNC_INTERVAL (5 minutes by default), as for conversation events.
        self.reported: Callable[[], None] = lambda: None
        self.fetch_wait = FETCH_WAIT_SECONDS
        self.fetches = Fetches(
            self.staging_root,
            lambda: self.fetch,
            settings.send_file_max_bytes,
            lambda: self.notify(),
        )
        self._last_sent: dict[str, float] = {}
        self.confirm_seconds = CONFIRM_SECONDS
        self._disabled_logged = False
        self.permission = Permission(settings.state_dir)
        self._held_logged = False
        self.send_wait = SEND_WAIT_SECONDS
        self._underway: dict[str, Underway] = {}  # by chat guid
        # Chats whose last send hung until osascript's timeout: served after the others.
        self._slow: set[str] = set()
        # Chats whose step raised (chat.db unreadable, the state file locked): failures in a
        # row and when to try again. One line a minute for all of them, and one when none is
        # failing any more.
        self._failing: dict[str, tuple[int, float]] = {}
        self._errors = ErrorLog("send_step_failed", log)

    # -- replies ----------------------------------------------------------------------------
    def replies_for(
        self, item: QueuedItem, response_body: str, now: float
    ) -> tuple[list[NewOutgoing], str]:
        """The bubbles the orchestrator's answer to `item` asks for (stored with the delivery),
        and the reply shape read or why there is none, for the delivery's log line."""
        planned = replies.plan(response_body)
        if not planned.bubbles:
            return [], planned.reason
        chat_guid = json.loads(item.body)["chat_guid"]
        if not is_chat_guid(chat_guid):
            return [], "invalid_chat_guid"
        log.info(
            "reply_planned",
            message_guid=item.message_guid,
            shape=planned.reason,
            bubbles=len(planned.bubbles),
            chat_guid=chat_guid,
        )
        return [
            NewOutgoing(
                chat_guid, b.text, now + b.delay, "reply", reply_to=item.message_guid, file=b.file
            )
            for b in planned.bubbles
        ], planned.reason

    # -- commands ---------------------------------------------------------------------------
    def execute(self, action: Action, now: float) -> None:
        """Carry out one sync command (see executor); wake the dispatcher if it stored a send."""
        # A chat named by the previous client's chat_identifier is looked up in chat.db first.
        action = commands.with_chat(action, self.chatdb.chat_guid_for)
        if executor.execute(self.store, action, now):
            self.notify()

    # -- sending ----------------------------------------------------------------------------
    def dispatch_step(self, now: float) -> float | None:
        """Send every chat's due head once. Returns seconds until something is due (None: idle)."""
        if not self.settings.send_enabled:
            if not self._disabled_logged and self.store.next_due_at() is not None:
                log.warning(
                    "sending_disabled",
                    hint="ARCHETY_SEND_ENABLED=0: replies and commands are stored, not sent",
                )
                self._disabled_logged = True
            return None
        if self.permission.held:
            # Never a send that would raise the consent prompt with nobody at the screen.
            if not self._held_logged and self.store.next_due_at() is not None:
                log.warning("sends_held", reason="automation_not_allowed")
                self._held_logged = True
            return None
        self._held_logged = False
        for chat, underway in list(self._underway.items()):
            if underway.wait(0):
                del self._underway[chat]
                self._guarded(underway.item, now, partial(self._record, underway, now))
        for fetching in self.fetches.finished():
            self._guarded(fetching.item, now, partial(self._fetched, fetching, now))
        gap = 1.0 / self.settings.send_rate_per_chat
        # A chat whose last send hung goes after the others (sorted() keeps due order within).
        for item in sorted(self.store.heads_due(now), key=lambda h: h.chat_guid in self._slow):
            if item.chat_guid in self._underway:
                continue  # its bubble before this one is still with Messages
            if item.chat_guid in self.fetches:
                continue  # its file is still being fetched: only this chat waits for it
            if self._retry_at(item.chat_guid) > now:
                continue  # its last step failed: it waits out its backoff
            if len(self._underway) >= MAX_SENDS_UNDER_WAY:
                break
            self._guarded(item, now, partial(self._step_one, item, now, gap))
        # Next wake-up: each chat's head when it is due and its rate limit allows.
        heads = self.store.heads_due(float("inf"))
        self._forget_failing({head.chat_guid for head in heads}, now)
        ready = [
            max(
                head.send_at,
                self._last_sent.get(head.chat_guid, float("-inf")) + gap,
                self._retry_at(head.chat_guid),
            )
            for head in heads
            if not self._waiting(head)
        ]
        if self._underway or self.fetches:
            ready.append(now + UNDER_WAY_RECHECK_SECONDS)
        return max(0.0, min(ready) - now) if ready else None

    def _waiting(self, head: Outgoing) -> bool:
        """Whether a chat's head waits for something under way rather than for a time: its
        send or its file's fetch, or a free fetch (it is woken when one is back)."""
        chat = head.chat_guid
        needs_fetch = head.file is not None and head.staged is None
        return chat in self._underway or chat in self.fetches or (needs_fetch and self.fetches.full)

    def _guarded(self, item: Outgoing, now: float, step: Callable[[], object]) -> None:
        chat = item.chat_guid
        try:
            step()
        except Exception as exc:
            # One row that cannot be sent or recorded never holds up other chats'. Its chat
            # waits longer after each failure in a row instead of one pacing gap: with chat.db
            # unreadable every chat failed three times a second, each with a traceback.
            failures = self._failing.get(chat, (0, 0.0))[0] + 1
            self._failing[chat] = (failures, now + retry_in(failures))
            self._last_sent[chat] = now
            self._errors.failed(exc, now, outgoing_id=item.id, chats_failing=len(self._failing))
            return
        if self._failing.pop(chat, None) is not None and not self._failing:
            self._errors.ok(now)

    def _retry_at(self, chat_guid: str) -> float:
        return self._failing.get(chat_guid, (0, float("-inf")))[1]

    def _forget_failing(self, chats_with_work: set[str], now: float) -> None:
        """A failing chat whose work is gone (sent or given up elsewhere) is failing no more."""
        gone = [chat for chat in self._failing if chat not in chats_with_work]
        for chat in gone:
            del self._failing[chat]
        if gone and not self._failing:
            self._errors.ok(now)

    def _step_one(self, item: Outgoing, now: float, gap: float) -> None:
        if now - item.send_at > MISSED_AFTER_SECONDS:
            # Tried before the Mac went down for an hour? Then it may well have gone out.
            if item.attempts and self._already_sent(item, self._target(item.chat_guid), now):
                return
            self._finish(
                item,
                MISSED,
                now,
                "message_failed",
                f"missed: due {utc_iso(item.send_at)}, more than an hour ago",
            )
        elif (
            item.origin == executor.REFLEX_ORIGIN
            or now >= self._last_sent.get(item.chat_guid, float("-inf")) + gap
        ):
            self._send_one(item, now)

    def _send_one(self, item: Outgoing, now: float) -> None:
        target = self._target(item.chat_guid)
        if item.file is not None and item.staged is None:
            staged = self._fetch_file(item, now)
            if staged is None:
                return
            item = replace(item, staged=staged)
        if item.attempts:
            if self._already_sent(item, target, now):
                return
            last = item.last_error or ""
            if last.startswith(UNCONFIRMED):
                # Looked for twice and not there: failed, and never sent a second time (a row
                # recorded later still would make that a duplicate bubble).
                error = last[len(UNCONFIRMED) :] + f", nor {RELOOK_SECONDS:g}s later"
                self._finish(item, FAILED, now, "message_failed", error)
                log.error("message_send_failed", outgoing_id=item.id, error=error)
                return
            log.info("send_recovered_for_retry", outgoing_id=item.id, attempts=item.attempts)
        # Only a row newer than this can be this send's: an earlier bubble with the same text
        # ("ok", "ok") is already in the chat, and must never confirm a send that wrote nothing.
        floor = self.chatdb.max_rowid()
        self.store.mark_sending(item, now, floor)
        if item.rowid_floor is not None:  # kept from the first attempt (see mark_sending)
            floor = item.rowid_floor
        send = self.send
        if item.staged is not None:  # a file: its staged path is the script's next argument
            send = _with_file(self.send, item.staged.path)
        underway = Underway.start(item, target, floor, now, send, lambda: self.notify())
        self._last_sent[item.chat_guid] = now
        if not underway.wait(self.send_wait):
            # Still with Messages: the other chats go on, this one waits for it.
            self._underway[item.chat_guid] = underway
            log.warning(
                "send_slow",
                outgoing_id=item.id,
                chat_guid=item.chat_guid,
                waited_s=self.send_wait,
            )
            return
        self._record(underway, now)

    def _record(self, underway: Underway, now: float) -> None:
        """What a send came to: confirmed in chat.db, retried, or failed, with its event."""
        item, target = underway.item, underway.target
        result = underway.outcome()
        if result.error and result.error.startswith(messages_app.TIMED_OUT):
            self._slow.add(item.chat_guid)
        else:
            self._slow.discard(item.chat_guid)
        if result.ok:
            since = underway.started - RECOVERY_SLACK_SECONDS
            result = self._confirm(item, target, since, underway.floor, result)
        attempt = item.attempts + 1
        log.info(
            "message_send_attempt",
            outgoing_id=item.id,
            chat_guid=item.chat_guid,
            origin=item.origin,
            attempt=attempt,
            ok=result.ok,
            via=result.via,
            error=result.error,
        )
        if (result.error or "").startswith(messages_app.AUTOMATION_DENIED):
            # Not sent: Messages refused the event. Kept, and sent once allowed.
            self.permission.refused(result.error, now)
            self.store.retry_later(item, now, result.error or "", now)
            return
        if result.error and result.error.startswith(NOT_RECORDED):
            # Kept as it is, with no new send: looked for again RELOOK_SECONDS from now.
            self.store.retry_later(item, now + RELOOK_SECONDS, UNCONFIRMED + result.error, now)
            log.info("send_unconfirmed", outgoing_id=item.id, relook_s=RELOOK_SECONDS)
            return
        if result.ok:
            self.permission.confirmed(now)
            self._finish(item, SENT, now, "message_sent", None, result.message_guid)
        elif result.retryable and attempt < MAX_SEND_ATTEMPTS:
            delay = SEND_RETRY_SECONDS[min(attempt, len(SEND_RETRY_SECONDS)) - 1]
            self.store.retry_later(item, now + delay, result.error or "", now)
        else:
            self._finish(item, FAILED, now, "message_failed", result.error)
            log.error(
                "message_send_failed",
                outgoing_id=item.id,
                chat_guid=item.chat_guid,
                attempts=attempt,
                error=result.error,
            )

    def busy_ids(self) -> set[int]:
        """Outgoing ids whose staging folder is in use right now (the prune leaves them)."""
        sending = {underway.item.id for underway in list(self._underway.values())}
        return sending | self.fetches.ids()

    def automation_step(self, now: float) -> str | None:
        """Look at the Automation state if a look is due or an operator asked (see
        permission); wake the dispatcher when sends may go again."""
        if not self.settings.send_enabled:
            return None
        held = self.permission.held
        state = self.permission.step(now)
        if held and not self.permission.held:
            self.notify()
        return state

    def _target(self, chat_guid: str) -> Target:
        if not is_chat_guid(chat_guid):  # refused by the sender, with the reason
            return Target(chat_guid, "", "", "iMessage")
        service = None if service_of(chat_guid) else self.chatdb.chat_service_name(chat_guid)
        return send_target(chat_guid, service)

    def _already_sent(self, item: Outgoing, target: Target, now: float) -> bool:
        """A row tried before (a crash mid-send, a timeout, an error after osascript) may have
        gone out: if Messages recorded it, it did, and sending it again would double it."""
        since = (item.sending_since or item.send_at) - RECOVERY_SLACK_SECONDS
        found = self._find_row(item, target, since, item.rowid_floor or 0)
        if found is not None and found.error == 0:
            log.info("send_recovered_as_sent", outgoing_id=item.id, attempts=item.attempts)
            self._finish(item, SENT, now, "message_sent", None, found.guid)
            return True
        return False

    def _find_row(self, item: Outgoing, target: Target, since: float, floor: int) -> SentRow | None:
        """The chat.db row that records this send: from-me, this text, in this chat, newer than
        `floor`, and not a row already credited to another send (one row, one send)."""
        chats = list(dict.fromkeys([item.chat_guid, *target.chat_guids]))
        credited = self.store.credited_guids(chats, since - RECOVERY_SLACK_SECONDS)
        return self.chatdb.find_sent(
            target.chat_guids,
            target.handle,
            item.text,
            since,
            floor,
            credited,
            item.staged.path if item.staged else None,
        )

    def _fetch_file(self, item: Outgoing, now: float) -> StagedFile | None:
        """Start fetching the row's file on a thread of its own (see fetches). None while it is
        under way (or no fetch is free): its chat waits, the others go on, and the dispatcher
        is woken when it is back."""
        fetching = self.fetches.start(item)
        if fetching is None or not fetching.job.wait(self.fetch_wait):
            return None
        self.fetches.take(item.chat_guid)
        return self._fetched(fetching, now)

    def _fetched(self, fetching: Fetching, now: float) -> StagedFile | None:
        """What a fetch came to: the row's file staged (see staging), or the row failed with
        the reason (message_failed); the rest of the command's parts still go."""
        item, got = fetching.item, fetching.job.outcome()
        row = self.store.staged_rows([item.id]).get(item.id)
        if row is None or row.status not in (PENDING, SENDING):
            # Cancelled while it was fetched: nothing to send, nothing to keep.
            staging.remove(self.staging_root, item.id)
            log.info("file_fetch_dropped", outgoing_id=item.id, status=row and row.status)
            return None
        if isinstance(got, FetchFailed):
            log.warning("file_not_sent", outgoing_id=item.id, reason=got.reason)
            self._finish(item, FAILED, now, "message_failed", got.reason)
            return None
        self.store.set_staged(item, got, now)
        log.info(
            "file_staged",
            outgoing_id=item.id,
            bytes=got.size,
            kind=Path(got.path).suffix.lstrip(".") or "none",
        )
        return got

    def _confirm(
        self, item: Outgoing, target: Target, since: float, floor: int, sent: SendResult
    ) -> SendResult:
        """osascript said yes; Messages has the last word. A send is done only when an outgoing
        row with this text, newer than the send, is joined to the chat with error 0 (macOS 26
        can exit 0 and write nothing, or an empty row in no chat). Not found in time is a
        failure, never retried: a late row would make a retry a duplicate."""
        deadline = time.monotonic() + self.confirm_seconds
        while True:
            found = self._find_row(item, target, since, floor)
            if found is not None and found.error == 0:
                return replace(sent, message_guid=found.guid)
            if found is not None:
                return SendResult(
                    False,
                    f"messages_error: Messages recorded the send with error {found.error}",
                    retryable=False,
                    via=sent.via,
                )
            if time.monotonic() >= deadline:
                return SendResult(
                    False,
                    f"{NOT_RECORDED}: osascript reported success but Messages recorded no sent "
                    f"message in this chat within {self.confirm_seconds:g}s",
                    retryable=False,
                    via=sent.via,
                )
            time.sleep(CONFIRM_POLL_SECONDS)

    def _unstage(self, item: Outgoing, status: str, message_guid: str | None) -> None:
        """A staged file goes once it is no use: the send failed, or Messages shows a copy of
        its own. If chat.db names our staged path as the file, it is Messages' file: kept, and
        removed by the prune KEEP_SECONDS later (see retention)."""
        if status == SENT and item.staged is not None:
            held = self.chatdb.attachment_paths(message_guid) if message_guid else []
            if retention.messages_holds_it(held, Path(item.staged.path).parent):
                log.info("staged_file_kept", outgoing_id=item.id, by_messages=bool(held))
                return
        staging.remove(self.staging_root, item.id)

    def _finish(
        self,
        item: Outgoing,
        status: str,
        now: float,
        event_type: str,
        error: str | None,
        message_guid: str | None = None,
    ) -> None:
        """Record the final state with its event; a sent message's event names the Apple guid
        of the row Messages wrote, so reactions and replies to it can be matched."""
        details: dict[str, Any] = {
            "message_id": item.id,
            "origin": item.origin,
            "status": status,
            "attempts": item.attempts + (0 if status == MISSED else 1),
        }
        if item.reply_to:
            details["reply_to"] = item.reply_to
        if error:
            details["error"] = error
        if item.file is not None and error:
            details["reason"] = error.split(":")[0]
        if item.staged is not None and status == SENT:
            name = Path(item.staged.path).name
            details["attachments"] = [
                {"filename": name, "bytes": item.staged.size, "sha256": item.staged.sha256}
            ]
        self.store.finish(
            item,
            status,
            now,
            event_type,
            {
                "command_id": item.command_id,
                "chat_guid": item.chat_guid,
                "thread_id": item.chat_guid,
                **({"message_guid": message_guid} if message_guid else {}),
                "details": details,
            },
            error,
            message_guid,
        )
        self.reported()
        if item.file is not None:
            self._unstage(item, status, message_guid)
        if status == MISSED:
            log.warning(
                "message_missed",
                outgoing_id=item.id,
                chat_guid=item.chat_guid,
                due=utc_iso(item.send_at),
            )
