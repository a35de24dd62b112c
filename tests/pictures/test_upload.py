"""The settle step and the pending follow-up: real chat.db, real state database, real pictures,
uploads parsed by the loopback backend. Times are passed in, so waits cost nothing."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, BOB
from PIL import Image

from archety_relay.backend.commands import UploadRetry
from archety_relay.config import Settings
from archety_relay.demo.messages_writer import AttachmentSpec, MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.outbound import executor
from archety_relay.pictures import rules
from archety_relay.pictures.upload import PENDING_WINDOW_SECONDS, Photos
from archety_relay.relay import Relay
from archety_relay.store import QueuedItem, Store

T0 = 1_800_000_000.0  # a wall-clock "now" chosen by the test


def picture(path: Path, size: tuple[int, int] = (640, 480), fmt: str = "JPEG") -> Path:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, fmt)
    path.write_bytes(out.getvalue())
    return path


def photo_spec(path: Path, guid: str, **kw: Any) -> AttachmentSpec:
    return AttachmentSpec(
        str(path),
        "image/jpeg",
        path.name,
        path.stat().st_size if path.exists() else 0,
        "public.jpeg",
        guid=guid,
        **kw,
    )


@pytest.fixture
def photos(relay: Relay, settings: Settings, store: Store) -> Iterator[Photos]:
    yield Photos(settings, relay.chatdb, store, relay.backend, fallback=None)


def queued(relay: Relay, store: Store) -> QueuedItem:
    relay.capture_step(time.time())
    item = store.head()
    assert item is not None
    return item


def write(
    writer: MessagesWriter, relay: Relay, text: str, *specs: AttachmentSpec, **kw: Any
) -> None:
    chat = kw.pop("chat", None) or writer.direct_chat(ALICE)
    relay.capture_step(time.time())  # cursor placed before the message
    writer.message(text, sender=ALICE, chat=chat, attachments=list(specs), guid="MSG-1", **kw)


def two_pictures_queued(
    writer: MessagesWriter, relay: Relay, store: Store, attachments: Path
) -> QueuedItem:
    """A message "two" with two JPEGs (AT-A, AT-B) on disk, captured and at the outbox's head."""
    write(
        writer,
        relay,
        "two",
        photo_spec(picture(attachments / "a.jpeg"), "AT-A"),
        photo_spec(picture(attachments / "b.jpeg"), "AT-B"),
    )
    return queued(relay, store)


def entries(body: bytes | None) -> list[dict[str, Any]]:
    assert body is not None
    return json.loads(body)["attachments"]


def test_ready_photo_uploaded_first_then_body_names_it(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """A picture on disk is uploaded (multipart, with the message's fields) before its message;
    the body to post lists it as uploaded with the backend's photo_id."""
    group = writer.group_chat("chat777", [ALICE, BOB])
    write(
        writer,
        relay,
        "\ufffclook 👀",
        photo_spec(picture(attachments / "IMG_1.jpeg"), "AT-1"),
        chat=group,
    )
    item = queued(relay, store)
    settled = photos.settle(item.message_guid, item.body, T0, T0)
    assert settled.kind == "ready"
    (upload,) = backend.uploads()
    fields = upload.body
    assert fields["attachment_guid"] == "AT-1" and fields["message_guid"] == "MSG-1"
    assert fields["chat_guid"] == "iMessage;+;chat777" and fields["mode"] == "group"
    assert fields["sender"] == fields["user_phone"] == ALICE
    assert fields["is_group"] == "true" and fields["caption"] == "look 👀"
    assert sorted(json.loads(fields["participants"])) == sorted([ALICE, BOB])
    assert fields["edge_agent_id"] == "test-agent"
    assert upload.files["file"].filename == "AT-1.jpg"
    assert upload.files["file"].content_type == "image/jpeg"
    (entry,) = entries(settled.body)
    assert entry["status"] == "uploaded" and entry["uploaded_photo_id"] == "photo-1"
    assert entry["is_photo"] is True and entry["skipped"] is False and "skip_reason" not in entry
    assert entry["guid"] == "AT-1" and entry["transfer_name"] == "IMG_1.jpeg"
    assert json.loads(settled.body or b"")["metadata"]["has_attachment"] is True


def test_not_a_picture_is_listed_skipped_and_never_uploaded(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """A voice message is listed with is_photo false, skipped as unsupported_type; no upload."""
    voice = attachments / "Audio Message.caf"
    voice.write_bytes(b"caff" + b"\x00" * 100)
    spec = AttachmentSpec(
        str(voice), "audio/x-caf", voice.name, 104, "com.apple.coreaudio-format", guid="AT-V"
    )
    write(writer, relay, "", spec)
    item = queued(relay, store)
    settled = photos.settle(item.message_guid, item.body, T0, T0)
    (entry,) = entries(settled.body)
    assert (entry["is_photo"], entry["status"], entry["skip_reason"]) == (
        False,
        "skipped",
        "unsupported_type",
    )
    assert backend.uploads() == []


def test_unreadable_picture_skipped_with_reason(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """A truncated picture is not uploaded; the message goes with skip_reason unreadable."""
    path = picture(attachments / "cut.jpeg", (1200, 900))
    path.write_bytes(path.read_bytes()[:500])
    write(writer, relay, "broken", photo_spec(path, "AT-2"))
    item = queued(relay, store)
    (entry,) = entries(photos.settle(item.message_guid, item.body, T0, T0).body)
    assert (entry["status"], entry["skip_reason"]) == ("skipped", "unreadable")
    assert backend.uploads() == []


def test_message_waits_for_a_downloading_picture_then_uploads_it(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """While the file is still in iCloud the message waits (a short poll, never past the
    deadline); once Messages finishes the transfer it is uploaded and the message is ready."""
    path = attachments / "IMG_3.heic"
    write(
        writer, relay, "from the trip", photo_spec(path, "AT-3", transfer_state=0, ck_sync_state=1)
    )
    item = queued(relay, store)
    first = photos.settle(item.message_guid, item.body, T0, T0 + 10)
    assert first.kind == "waiting" and first.wait == 1.0
    near_deadline = photos.settle(item.message_guid, item.body, T0, T0 + 59.5)
    assert near_deadline.kind == "waiting" and near_deadline.wait == pytest.approx(0.5)
    picture(path)
    writer.finish_download("AT-3")
    done = photos.settle(item.message_guid, item.body, T0, T0 + 59.8)
    assert done.kind == "ready" and entries(done.body)[0]["status"] == "uploaded"
    assert len(backend.uploads()) == 1


def test_past_the_wait_message_goes_pending_and_picture_follows_as_event(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """After ARCHETY_ATTACHMENT_WAIT the message is posted with status pending; the follow-up
    uploads the picture when it lands and reports attachment_uploaded with its photo_id."""
    path = attachments / "IMG_4.jpeg"
    write(
        writer, relay, "late picture", photo_spec(path, "AT-4", transfer_state=0, ck_sync_state=1)
    )
    item = queued(relay, store)
    settled = photos.settle(item.message_guid, item.body, T0, T0 + 61)
    assert settled.kind == "ready"
    (entry,) = entries(settled.body)
    assert entry["status"] == "pending" and "uploaded_photo_id" not in entry
    assert photos.follow_up_step(T0 + 70) == (0, pytest.approx(2.0))  # still not there
    assert store.pending_events() == []
    picture(path)
    writer.finish_download("AT-4")
    events, wait = photos.follow_up_step(T0 + 80)
    assert (events, wait) == (1, None)
    (event,) = store.pending_events()
    assert event.event_type == "attachment_uploaded"
    assert event.payload["details"] == {
        "message_guid": "MSG-1",
        "attachment_guid": "AT-4",
        "photo_id": "photo-1",
    }
    assert event.payload["chat_guid"] == f"iMessage;-;{ALICE}"
    (upload,) = backend.uploads()
    assert upload.body["caption"] == "late picture"
    # The frozen body does not change: a retry of the message posts the same bytes.
    assert photos.settle(item.message_guid, item.body, T0, T0 + 90).body == settled.body


def test_pending_picture_given_up_after_a_day(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """A picture that never downloads is reported attachment_unavailable after 24 h."""
    write(
        writer,
        relay,
        "x",
        photo_spec(attachments / "never.jpeg", "AT-5", transfer_state=0, ck_sync_state=1),
    )
    item = queued(relay, store)
    photos.settle(item.message_guid, item.body, T0, T0 + 61)
    assert photos.follow_up_step(T0 + 61 + PENDING_WINDOW_SECONDS + 1) == (1, None)
    (event,) = store.pending_events()
    assert event.event_type == "attachment_unavailable"
    assert event.payload["details"]["reason"] == "not_downloaded"
    assert backend.uploads() == []


def test_upload_5xx_is_retried_with_the_same_key_413_is_skipped(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """A 503 makes the message wait like any delivery failure (its outcome comes back to the
    caller); the retry uploads with the same Idempotency-Key. A 413 skips only that picture."""
    item = two_pictures_queued(writer, relay, store, attachments)
    backend.script("/photo/upload", Behaviour(503, headers={"Retry-After": "3"}))
    failed = photos.settle(item.message_guid, item.body, T0, T0)
    assert failed.kind == "failed" and failed.outcome is not None
    assert (failed.outcome.status, failed.outcome.retry_after) == (503, 3.0)
    backend.script("/photo/upload", Behaviour(200), Behaviour(413))
    settled = photos.settle(item.message_guid, item.body, T0, T0 + 5)
    a, b = entries(settled.body)
    assert a["status"] == "uploaded" and a["uploaded_photo_id"] == "photo-1"
    assert (b["status"], b["skip_reason"]) == ("skipped", "upload_rejected_413")
    keys = [r.headers["Idempotency-Key"] for r in backend.requests_to("/photo/upload")]
    assert keys == ["AT-A", "AT-A", "AT-B"]


def test_accepted_picture_not_uploaded_again_after_a_restart(
    relay: Relay,
    settings: Settings,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """photo_id is stored when the backend gives it: a new process (fresh Photos) whose first
    attempt died after upload 1 of 2 uploads only the second picture, and posts both ids."""
    item = two_pictures_queued(writer, relay, store, attachments)
    backend.script("/photo/upload", Behaviour(200), Behaviour(503))
    first = Photos(settings, relay.chatdb, store, relay.backend, fallback=None)
    assert first.settle(item.message_guid, item.body, T0, T0).kind == "failed"
    restarted = Photos(settings, relay.chatdb, store, relay.backend, fallback=None)
    settled = restarted.settle(item.message_guid, item.body, T0, T0 + 1)
    assert [e["uploaded_photo_id"] for e in entries(settled.body)] == ["photo-1", "photo-2"]
    assert [r.body["attachment_guid"] for r in backend.uploads()] == ["AT-A", "AT-B"]


def test_upload_retry_reads_the_file_again_and_reports(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """upload_retry makes a settled picture pending again: the follow-up reads the file again,
    uploads it and reports with the command's id; an attachment chat.db does not have is
    reported unavailable. Nothing is uploaded inside the command's transaction."""
    write(writer, relay, "again", photo_spec(picture(attachments / "c.jpeg"), "AT-C"))
    item = queued(relay, store)
    photos.settle(item.message_guid, item.body, T0, T0)
    executor.execute(store, UploadRetry("cmd-9", "AT-C", None), T0 + 100)
    executor.execute(store, UploadRetry("cmd-10", "NO-SUCH", f"iMessage;-;{ALICE}"), T0 + 100)
    assert len(backend.uploads()) == 1  # queued, not yet done
    assert photos.follow_up_step(T0 + 100) == (2, None)
    assert [r.headers["Idempotency-Key"] for r in backend.uploads()] == ["AT-C", "AT-C"]
    by_command = {e.payload["command_id"]: e for e in store.pending_events()}
    assert by_command["cmd-9"].event_type == "attachment_uploaded"
    assert by_command["cmd-9"].payload["details"]["photo_id"] == "photo-1"
    assert by_command["cmd-10"].event_type == "attachment_unavailable"
    assert by_command["cmd-10"].payload["details"]["reason"] == "attachment_gone"


def test_text_only_message_is_untouched(
    relay: Relay, photos: Photos, store: Store, writer: MessagesWriter
) -> None:
    """A message without attachments is posted exactly as captured; nothing is stored for it."""
    write(writer, relay, "just text")
    item = queued(relay, store)
    assert photos.settle(item.message_guid, item.body, T0, T0).body == item.body
    assert store.settled_body(item.message_guid) is None


@pytest.mark.parametrize(
    ("entry", "photo"),
    [
        ({"mime_type": "image/heic", "uti": "public.heic"}, True),
        ({"mime_type": None, "uti": "public.heic", "transfer_name": "x.heic"}, True),
        ({"mime_type": None, "uti": None, "transfer_name": "Sticker.HEIC"}, True),
        ({"mime_type": "image/gif"}, True),
        ({"mime_type": "video/quicktime", "transfer_name": "IMG_1.MOV"}, False),
        ({"mime_type": "audio/x-caf", "uti": "com.apple.coreaudio-format"}, False),
        ({"mime_type": "text/vcard", "transfer_name": "card.vcf"}, False),
        ({"mime_type": "application/pdf", "transfer_name": "x.jpg.pdf"}, False),
        ({"mime_type": None, "uti": None, "transfer_name": None, "path": None}, False),
    ],
)
def test_which_attachments_are_pictures(entry: dict[str, Any], photo: bool) -> None:
    """Pictures by MIME type, UTI or file name; a declared non-picture type wins over a name."""
    assert rules.is_photo(entry) is photo


def test_picture_settings_from_the_environment(env: dict[str, str], tmp_path: Path) -> None:
    """The three picture settings are read, and a bad value names its variable."""
    from archety_relay import config
    from archety_relay.errors import ConfigError

    loaded = config.load(
        environ={
            **env,
            "ARCHETY_PHOTO_MAX_PX": "2048",
            "ARCHETY_PHOTO_MAX_BYTES": "1000000",
            "ARCHETY_ATTACHMENT_WAIT": "15",
        },
        cwd=tmp_path,
    )
    assert (loaded.photo_max_px, loaded.photo_max_bytes, loaded.attachment_wait) == (
        2048,
        1_000_000,
        15.0,
    )
    defaults = config.load(environ=env, cwd=tmp_path)
    assert (defaults.photo_max_px, defaults.photo_max_bytes, defaults.attachment_wait) == (
        1024,
        5 * 1024 * 1024,
        60.0,
    )
    for name, bad in (("ARCHETY_PHOTO_MAX_PX", "big"), ("ARCHETY_PHOTO_MAX_BYTES", "5")):
        with pytest.raises(ConfigError, match=name):
            config.load(environ={**env, name: bad}, cwd=tmp_path)


def test_settled_body_dropped_once_its_message_left_the_outbox(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    attachments: Path,
) -> None:
    """The frozen body is kept while its message is queued and dropped after delivery, so the
    state file does not grow with every picture ever sent."""
    write(writer, relay, "pic", photo_spec(picture(attachments / "d.jpeg"), "AT-D"))
    item = queued(relay, store)
    photos.settle(item.message_guid, item.body, T0, T0)
    photos.follow_up_step(T0 + 1)
    assert store.settled_body(item.message_guid) is not None  # still queued: kept
    store.mark_delivered(item, T0 + 2)
    photos.follow_up_step(T0 + 2 + 3600)
    assert store.settled_body(item.message_guid) is None


def test_files_outside_messages_folders_are_never_read(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
    tmp_path: Path,
) -> None:
    """The relay reads with Full Disk Access, so chat.db's filename must not take it anywhere:
    a path that climbs out of Attachments with `..`, a symlink inside Attachments that points
    at a private picture, and a hard link to it there (no `..`, no symlink: it resolves inside)
    are skipped (`outside_attachments`) and never uploaded; a picture in Attachments and a
    sticker in StickerCache are (review 2026-12-04, #14)."""
    (tmp_path / "home" / "Pictures").mkdir(parents=True, exist_ok=True)
    private = picture(tmp_path / "home" / "Pictures" / "passport.jpeg")
    (attachments / "7f" / "01").mkdir(parents=True)
    climbing = attachments / "7f" / "01" / ".." / ".." / ".." / ".." / "home" / "Pictures"
    (attachments / "ab").mkdir()
    (attachments / "ab" / "IMG_2.jpeg").symlink_to(private)
    (attachments / "ef").mkdir()
    os.link(private, attachments / "ef" / "IMG_4.jpeg")
    (attachments / "cd").mkdir()
    stickers = writer.path.parent / "StickerCache" / "8e682c38-ST-1"
    stickers.mkdir(parents=True)
    write(
        writer,
        relay,
        "five",
        photo_spec(climbing / "passport.jpeg", "AT-UP"),
        photo_spec(attachments / "ab" / "IMG_2.jpeg", "AT-LINK"),
        photo_spec(attachments / "ef" / "IMG_4.jpeg", "AT-HARD"),
        photo_spec(picture(attachments / "cd" / "IMG_3.jpeg"), "AT-OK"),
        photo_spec(picture(stickers / "ST-1.jpeg"), "AT-STICKER"),
    )
    item = queued(relay, store)
    settled = photos.settle(item.message_guid, item.body, T0, T0)
    assert [u.body["attachment_guid"] for u in backend.uploads()] == ["AT-OK", "AT-STICKER"]
    outcome = {e["guid"]: (e["status"], e.get("skip_reason")) for e in entries(settled.body)}
    assert outcome == {
        "AT-UP": ("skipped", "outside_attachments"),
        "AT-LINK": ("skipped", "outside_attachments"),
        "AT-HARD": ("skipped", "outside_attachments"),
        "AT-OK": ("uploaded", None),
        "AT-STICKER": ("uploaded", None),
    }


def test_upload_retry_of_a_non_picture_is_reported_never_converted(
    relay: Relay,
    photos: Photos,
    store: Store,
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """upload_retry naming a voice message (listed as not a picture) reports it unsupported:
    its file is never handed to a converter (on a Mac, sips would render a PDF's first page)."""
    voice = attachments / "Audio Message.caf"
    voice.write_bytes(b"caff" + bytes(100))
    spec = AttachmentSpec(
        str(voice), "audio/x-caf", voice.name, 104, "com.apple.coreaudio-format", guid="AT-VOICE"
    )
    write(writer, relay, "", spec)
    item = queued(relay, store)
    photos.settle(item.message_guid, item.body, T0, T0)
    executor.execute(store, UploadRetry("cmd-1", "AT-VOICE", None), T0 + 1)
    assert photos.follow_up_step(T0 + 1) == (1, None)
    assert backend.uploads() == []
    (event,) = store.pending_events()
    assert event.event_type == "attachment_unavailable"
    assert event.payload["details"]["reason"] == "unsupported_type"
