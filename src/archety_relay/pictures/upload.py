"""Pictures to the backend: the settle step before a message goes, and the follow-up after.

    settle(guid, body, enqueued_at, now)   before one attempt at one queued message: upload
                                           what is ready, then Ready(final body) | Wait(s) |
                                           Failed(outcome) - only this message's chat waits
    follow_up_step(now)                    pictures posted as `pending` (still in iCloud when
                                           their message went): upload when they land, for
                                           24 h, each outcome an event
                                           (and pictures an `upload_retry` made pending)

Times are wall clock: a message's wait starts when it was captured (`enqueued_at`) and a pending
picture's window is stored, so both survive restarts. The final body is frozen in the store the
first time it is complete, so every later retry posts the same bytes, and a photo_id is stored
the moment the backend gives it, so a kill -9 never uploads an accepted picture again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from ..backend.client import Backend
from ..chatdb.reader import ChatDb
from ..chatdb.rows import AttachmentState
from ..config import Settings
from ..policy import HttpOutcome
from ..store import Store, UploadRecord
from . import conversion, rules
from .rules import PENDING, SKIPPED, UPLOADED, WAITING

log = structlog.get_logger("archety_relay.photos")

# A waiting message looks at its attachment rows this often (one indexed lookup each time).
WAIT_POLL_SECONDS = 1.0
# A picture posted as pending is watched this long, then reported unavailable.
PENDING_WINDOW_SECONDS = 24 * 3600.0
# Pending pictures are looked at after 2, 4, 8 ... seconds, at most this far apart.
PENDING_MAX_INTERVAL = 60.0
# Converted pictures kept in memory so an upload retried after a 503 is not converted again.
CONVERTED_CACHE = 4
# Settled bodies of delivered messages and old upload records are dropped this often.
PRUNE_INTERVAL_SECONDS = 3600.0
_DEFAULT: Any = object()


@dataclass(frozen=True)
class Settle:
    kind: str  # "ready" | "waiting" | "failed"
    body: bytes | None = None  # ready: what to post
    wait: float | None = None  # waiting: seconds until worth asking again
    outcome: HttpOutcome | None = None  # failed: an upload's outcome, handled like a message's
    attachment_guid: str | None = None  # failed: the picture whose upload failed


class Photos:
    def __init__(
        self,
        settings: Settings,
        chatdb: ChatDb,
        store: Store,
        backend: Backend,
        *,
        fallback: conversion.Fallback | None = _DEFAULT,
    ) -> None:
        self.settings = settings
        self.chatdb = chatdb
        self.store = store
        self.backend = backend
        self.limits = conversion.Limits(settings.photo_max_px, settings.photo_max_bytes)
        self.fallback = conversion.default_fallback() if fallback is _DEFAULT else fallback
        # Settle (sender or lane threads), the follow-up and upload_retry share this cache.
        self._converted: OrderedDict[str, conversion.Converted] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._pruned_at: float | None = None

    # -- before the message -----------------------------------------------------------------
    def settle(self, message_guid: str, body: bytes, enqueued_at: float, now: float) -> Settle:
        """Are this message's pictures settled? Upload what is ready; say what to post or wait."""
        if not rules.has_attachments(body):
            return Settle("ready", body)
        frozen = self.store.settled_body(message_guid)
        if frozen is not None:
            return Settle("ready", frozen)
        entries = rules.attachment_entries(body)
        if not entries:
            return Settle("ready", body)
        guids = [str(e["guid"]) for e in entries]
        records = self.store.upload_records(guids)
        open_entries = [e for e in entries if _is_open(records.get(str(e["guid"])))]
        states = self.chatdb.attachment_states(
            [str(e["guid"]) for e in open_entries if rules.is_photo(e)]
        )
        for entry in open_entries:
            guid = str(entry["guid"])
            record = records.get(guid) or self._new_record(entry, message_guid, body)
            if not record.is_photo:
                record = replace(record, status=SKIPPED, skip_reason=rules.UNSUPPORTED)
            else:
                state = states.get(guid)
                ready = rules.readiness(state, _file_size(state))
                if ready == "gone":
                    record = replace(record, status=SKIPPED, skip_reason=rules.GONE)
                elif ready == "ready" and state is not None:
                    record = replace(record, path=state.path)
                    record, failed = self._upload(record, now)
                    if failed is not None:
                        self.store.save_upload(record, now)  # its attempts, and that it exists
                        return Settle("failed", outcome=failed, attachment_guid=guid)
            if record != records.get(guid):
                self.store.save_upload(record, now)
            records[guid] = record
        waiting = [records[g] for g in guids if records[g].status == WAITING]
        deadline = enqueued_at + self.settings.attachment_wait
        if waiting and now < deadline:
            return Settle("waiting", wait=min(WAIT_POLL_SECONDS, deadline - now))
        pending = [
            replace(
                r,
                status=PENDING,
                pending_until=now + PENDING_WINDOW_SECONDS,
                next_try_at=now + WAIT_POLL_SECONDS,
            )
            for r in waiting
        ]
        for record in pending:
            records[record.attachment_guid] = record
            log.info(
                "photo_pending",
                message_guid=message_guid,
                attachment_guid=record.attachment_guid,
                waited_s=round(now - enqueued_at, 1),
            )
        final = rules.settled_body(body, {g: r.as_dict() for g, r in records.items()})
        self.store.settle(message_guid, final, pending, now)
        return Settle("ready", self.store.settled_body(message_guid) or final)

    def give_up(self, attachment_guid: str, outcome: HttpOutcome, now: float) -> None:
        """The backend keeps failing this one picture while it takes other messages: skip the
        picture (`upload_failed_<status>`), so its message, text and all, can still go."""
        record = self.store.upload_records([attachment_guid]).get(attachment_guid)
        if record is None or record.status != WAITING:
            return
        reason = f"upload_failed_{outcome.status or outcome.error}"
        self.store.save_upload(replace(record, status=SKIPPED, skip_reason=reason), now)
        log.warning(
            "photo_given_up",
            attachment_guid=attachment_guid,
            message_guid=record.message_guid,
            reason=reason,
            hint="uploads of this picture kept failing while other messages went through; its "
            "message goes on without it, listing it as skipped; upload_retry can send it later",
        )

    def give_up_all(self, message_guid: str, body: bytes, reason: str, now: float) -> int:
        """The picture step keeps failing for this message: each of its pictures not settled
        yet is skipped with `reason` (from the store alone: chat.db may be what fails), so the
        next attempt posts its text. Returns how many were given up."""
        entries = rules.attachment_entries(body) if rules.has_attachments(body) else []
        records = self.store.upload_records([str(e["guid"]) for e in entries])
        given_up = 0
        for entry in entries:
            guid = str(entry["guid"])
            if _is_open(records.get(guid)):
                record = records.get(guid) or self._new_record(entry, message_guid, body)
                self.store.save_upload(replace(record, status=SKIPPED, skip_reason=reason), now)
                given_up += 1
        return given_up

    def _new_record(self, entry: dict[str, Any], message_guid: str, body: bytes) -> UploadRecord:
        guid = str(entry["guid"])
        return UploadRecord(
            attachment_guid=guid,
            message_guid=message_guid,
            is_photo=rules.is_photo(entry),
            status=WAITING,
            photo_id=None,
            skip_reason=None,
            path=entry.get("path"),
            fields=rules.upload_fields(body, guid, self.settings.agent_id),
        )

    # -- converting and uploading -------------------------------------------------------------
    def _upload(self, record: UploadRecord, now: float) -> tuple[UploadRecord, HttpOutcome | None]:
        """Convert and upload one picture whose file is there. Returns its new record, and the
        outcome when the upload must be retried like a message (5xx, 429, no answer, 401/403)."""
        guid = record.attachment_guid
        source = self._confined(record.path)
        if source is None:
            log.warning(
                "photo_outside_attachments",
                attachment_guid=guid,
                message_guid=record.message_guid,
                hint="chat.db names a file that resolves outside Messages' Attachments and "
                "StickerCache folders (through `..`, a symlink or a hard link); it is not read "
                "or uploaded and its message goes on, listing it as skipped",
            )
            return replace(record, status=SKIPPED, skip_reason=rules.OUTSIDE), None
        converted = self._convert(guid, source, now)
        if converted.data is None or converted.mime is None:
            log.warning(
                "photo_skipped",
                attachment_guid=guid,
                message_guid=record.message_guid,
                reason=converted.reason,
                hint="the picture could not be converted (unreadable: damaged or an unknown "
                "format; too_large: past Pillow's pixel limit, the memory budget or "
                "ARCHETY_PHOTO_MAX_BYTES; decoder_crashed: converting it killed the relay "
                "twice); its message went on, listing it as skipped",
            )
            return replace(record, status=SKIPPED, skip_reason=converted.reason), None
        fields = {"attachment_guid": guid, "edge_agent_id": self.settings.agent_id}
        fields.update(record.fields)
        outcome = self.backend.upload_photo(
            fields, f"{guid}.{converted.extension}", converted.data, converted.mime, guid
        )
        result = rules.upload_result(outcome)
        attempts = record.attempts + 1
        log.info(
            "photo_upload_attempt",
            attachment_guid=guid,
            message_guid=record.message_guid,
            status=outcome.status,
            error=outcome.error,
            attempt=attempts,
            bytes=len(converted.data),
            mime=converted.mime,
            ms=round(outcome.elapsed_ms, 1),
            result=result.status,
        )
        if result.status == "retry":
            return replace(record, attempts=attempts), outcome
        self._forget(guid)
        if result.status == UPLOADED:
            # analysis / action / status in the answer are the backend's business; debug only.
            log.debug("photo_upload_answer", attachment_guid=guid, answer=outcome.body[:500])
            if result.photo_id is None:
                log.warning("photo_upload_without_photo_id", attachment_guid=guid)
            uploaded = replace(record, status=UPLOADED, photo_id=result.photo_id, attempts=attempts)
            # Committed before anything else: an accepted picture is never uploaded again.
            self.store.save_upload(uploaded, now)
            return uploaded, None
        log.warning(
            "photo_upload_rejected",
            attachment_guid=guid,
            status=outcome.status,
            # Not the answer itself: error bodies echo what was sent, and the caption is
            # message text, which never goes to the log at warning level.
            response_chars=len(outcome.body),
            hint="the backend refused this picture; its message went on, listing it as "
            "skipped (upload_rejected_<status>); the backend can ask again with upload_retry",
        )
        return replace(
            record, status=SKIPPED, skip_reason=result.skip_reason, attempts=attempts
        ), None

    def _confined(self, path: str | None) -> Path | None:
        """The file resolved (`..` and symlinks followed), or None when it lies outside the
        folders beside chat.db where Messages keeps attachments or is a hard link (see
        rules.confined). What is converted is this resolved path, so the file checked is the
        file read."""
        if not path:
            return None
        folder = self.settings.chat_db.parent
        roots = [os.path.realpath(folder / name) for name in rules.MESSAGES_FOLDERS]
        resolved = os.path.realpath(path)
        try:
            links = os.stat(resolved).st_nlink
        except OSError:  # not there (yet): the conversion reports it as before
            links = 1
        return Path(resolved) if rules.confined(resolved, roots, links) else None

    def _convert(self, guid: str, path: Path, now: float) -> conversion.Converted:
        with self._cache_lock:
            cached = self._converted.get(guid)
        if cached is not None:
            return cached
        # Under the conversion lock, so a picture waiting for another's conversion is never
        # marked as started; the mark is committed before the decoder runs, so a native crash
        # (libheif, a Pillow C decoder) or an out-of-memory kill leaves it behind, and under
        # launchd's KeepAlive the picture does not crash the relay in a loop.
        with conversion.one_at_a_time:
            earlier = self.store.begin_conversion(guid, now)
            if earlier >= rules.CRASHED_CONVERSIONS:
                log.error(
                    "photo_decoder_crashed",
                    attachment_guid=guid,
                    unfinished=earlier,
                    hint="converting this picture killed the relay twice (a decoder crash or "
                    "an out-of-memory kill); it is not tried again and its message goes on, "
                    "listing it as skipped (decoder_crashed)",
                )
                return conversion.Converted(None, None, rules.DECODER_CRASHED)
            started = time.monotonic()
            try:
                converted = conversion.convert(path, self.limits, self.fallback)
            finally:  # came back, even raising: only a dead process leaves the mark
                self.store.end_conversion(guid)
        log.info(
            "photo_converted",
            attachment_guid=guid,
            ms=round((time.monotonic() - started) * 1000, 1),
            bytes=len(converted.data or b""),
            width=converted.width,
            height=converted.height,
            via=converted.via,
            reason=converted.reason,
        )
        if converted.data is not None:
            with self._cache_lock:
                self._converted[guid] = converted
                while len(self._converted) > CONVERTED_CACHE:
                    self._converted.popitem(last=False)
        return converted

    def _forget(self, guid: str) -> None:
        with self._cache_lock:
            self._converted.pop(guid, None)

    # -- after the message: pending pictures --------------------------------------------------
    def follow_up_step(self, now: float) -> tuple[int, float | None]:
        """Look at the pending pictures that are due. Returns (events added, seconds until the
        next is due or None when none is pending)."""
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_INTERVAL_SECONDS:
            self._pruned_at = now
            self.store.prune_uploads(now)
        due = self.store.pending_uploads(now)
        events = 0
        if due:
            states = self.chatdb.attachment_states([r.attachment_guid for r in due])
            for record in due:
                events += self._follow_up(record, states.get(record.attachment_guid), now)
        next_at = self.store.next_pending_at()
        return events, (None if next_at is None else max(0.0, next_at - now))

    def _follow_up(self, record: UploadRecord, state: AttachmentState | None, now: float) -> int:
        if not record.is_photo:
            # upload_retry may name any attachment: a voice message or a PDF is no picture
            # (sips would render a PDF's first page), so it is reported, never converted.
            return self._report(replace(record, status=SKIPPED, skip_reason=rules.UNSUPPORTED), now)
        ready = rules.readiness(state, _file_size(state))
        if ready == "gone":
            return self._report(replace(record, status=SKIPPED, skip_reason=rules.GONE), now)
        if ready == "waiting":
            if record.pending_until is not None and now >= record.pending_until:
                gave_up = replace(record, status=SKIPPED, skip_reason=rules.NOT_DOWNLOADED)
                return self._report(gave_up, now)
            looked = replace(record, attempts=record.attempts + 1)
            self.store.save_upload(replace(looked, next_try_at=now + _interval(record)), now)
            return 0
        assert state is not None
        done, failed = self._upload(replace(record, path=state.path, status=PENDING), now)
        if failed is not None:
            later = replace(done, next_try_at=now + _interval(done))
            self.store.save_upload(later, now)
            return 0
        return self._report(done, now)

    def _report(self, record: UploadRecord, now: float) -> int:
        """Store a picture's outcome with the sync event that tells the backend about it."""
        uploaded = record.status == UPLOADED
        details: dict[str, Any] = {
            "message_guid": record.message_guid,
            "attachment_guid": record.attachment_guid,
        }
        if uploaded:
            details["photo_id"] = record.photo_id
        else:
            details["reason"] = record.skip_reason
        chat_guid = record.fields.get("chat_guid")
        payload = {"chat_guid": chat_guid, "thread_id": chat_guid, **details, "details": details}
        if record.command_id:  # the answer to an upload_retry
            payload["command_id"] = record.command_id
        event_type = "attachment_uploaded" if uploaded else "attachment_unavailable"
        self.store.finish_upload(replace(record, command_id=None), event_type, payload, now)
        log.info(event_type, **details)
        return 1


def _is_open(record: UploadRecord | None) -> bool:
    return record is None or record.status == WAITING


def _file_size(state: AttachmentState | None) -> int | None:
    if state is None or not state.path:
        return None
    try:
        return os.stat(state.path).st_size
    except OSError:
        return None


def _interval(record: UploadRecord) -> float:
    return float(min(PENDING_MAX_INTERVAL, 2 ** min(record.attempts + 1, 10)))
