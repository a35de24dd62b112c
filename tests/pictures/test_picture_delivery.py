"""Pictures in delivery: uploaded before their message, by the real relay (in process and as the
daemon in a subprocess, killed with -9 at the worst moments), against the loopback backend."""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ALICE, BOB, RelayProcess, log_events, relay_life, wait_until
from PIL import Image

from archety_relay import config
from archety_relay.demo.messages_writer import AttachmentSpec, MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.relay import Relay


def picture(path: Path) -> AttachmentSpec:
    out = io.BytesIO()
    Image.new("RGB", (800, 600), (30, 160, 90)).save(out, "JPEG")
    path.write_bytes(out.getvalue())
    return AttachmentSpec(str(path), "image/jpeg", path.name, len(out.getvalue()), "public.jpeg")


def deliver_all(relay: Relay) -> None:
    relay.capture_step(time.time())
    for _ in range(20):
        if relay.deliver_step(time.monotonic()).kind != "delivered":
            break


def attachment_of(body: dict[str, Any]) -> dict[str, Any]:
    (entry,) = body["attachments"]
    return entry


def test_picture_uploaded_before_its_message(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, attachments: Path
) -> None:
    """The upload reaches the backend first; the message then names the photo_id it got."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message(
        "\ufffcsunset", sender=ALICE, chat=chat, attachments=[picture(attachments / "s.jpeg")]
    )
    deliver_all(relay)
    (upload,) = backend.uploads()
    (message,) = backend.messages()
    assert [r.path for r in backend.received if r.path != "/orchestrator/heartbeat"] == [
        "/photo/upload",
        "/orchestrator/message",
    ]
    entry = attachment_of(message.body)
    assert entry["guid"] == upload.body["attachment_guid"] == upload.headers["Idempotency-Key"]
    assert entry["status"] == "uploaded" and entry["uploaded_photo_id"] == "photo-1"
    assert message.body["text"] == "sunset" and message.body["metadata"]["has_attachment"] is True


def test_upload_401_pauses_like_a_message(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, attachments: Path
) -> None:
    """A rejected secret on the upload pauses delivery and keeps the message; nothing is posted."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message("pic", sender=ALICE, chat=chat, attachments=[picture(attachments / "p.jpeg")])
    backend.script("/photo/upload", Behaviour(401))
    relay.capture_step(time.time())
    assert relay.deliver_step(time.monotonic()).kind == "auth_paused"
    assert backend.messages(accepted_only=False) == [] and relay.store.stats().depth == 1


def test_kill9_between_upload_and_message_does_not_upload_again(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """The daemon is killed while the message (after its accepted upload) is at the backend:
    after a restart the message is delivered with the same photo_id and the picture is not
    uploaded a second time."""
    chat = writer.direct_chat(ALICE)
    backend.script("/orchestrator/message", Behaviour(hang=True))
    first = start_relay()
    writer.message("pic", sender=ALICE, chat=chat, attachments=[picture(attachments / "k.jpeg")])
    assert backend.wait_for(lambda b: len(b.messages(accepted_only=False)) == 1, 20)
    first.kill9()
    start_relay()
    assert backend.wait_for(lambda b: len(b.messages()) == 1, 20)
    assert len(backend.requests_to("/photo/upload")) == 1
    assert attachment_of(backend.messages()[0].body)["uploaded_photo_id"] == "photo-1"


def test_kill9_mid_upload_uploads_again_with_the_same_key(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """Killed while the upload is unanswered: after a restart the picture is uploaded again under
    the same Idempotency-Key and the message goes once, naming it."""
    chat = writer.direct_chat(ALICE)
    backend.script("/photo/upload", Behaviour(hang=True))
    first = start_relay()
    writer.message("pic", sender=ALICE, chat=chat, attachments=[picture(attachments / "m.jpeg")])
    assert backend.wait_for(lambda b: len(b.requests_to("/photo/upload")) == 1, 20)
    first.kill9()
    start_relay()
    assert backend.wait_for(lambda b: len(b.messages()) == 1, 20)
    keys = {r.headers["Idempotency-Key"] for r in backend.requests_to("/photo/upload")}
    assert len(keys) == 1 and len(backend.uploads()) == 1
    entry = attachment_of(backend.messages()[0].body)
    assert entry["status"] == "uploaded" and entry["guid"] in keys


def test_daemon_posts_pending_then_reports_the_upload_promptly(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    attachments: Path,
) -> None:
    """A picture still in iCloud: after ARCHETY_ATTACHMENT_WAIT the message goes as pending;
    when Messages finishes the download the daemon uploads it and an attachment_uploaded event
    reaches /edge/sync at once (the sync interval is an hour)."""
    chat = writer.direct_chat(ALICE)
    start_relay({"ARCHETY_ATTACHMENT_WAIT": "0.5", "ARCHETY_SYNC_INTERVAL": "3600"})
    path = attachments / "IMG_9.jpeg"
    spec = AttachmentSpec(str(path), "image/jpeg", path.name, 0, "public.jpeg", 0, 1, "AT-9")
    writer.message("from iCloud", sender=ALICE, chat=chat, attachments=[spec])
    assert backend.wait_for(lambda b: len(b.messages()) == 1, 20)
    assert attachment_of(backend.messages()[0].body)["status"] == "pending"
    picture(path)
    writer.finish_download("AT-9")

    def reported(b: StubBackend) -> list[dict[str, Any]]:
        return [
            e
            for r in b.requests_to("/edge/sync")
            for e in (r.body or {}).get("events", [])
            if e.get("event_type") == "attachment_uploaded"
        ]

    assert backend.wait_for(lambda b: bool(reported(b)), 30)
    (event,) = reported(backend)[:1]
    assert event["details"] == {
        "message_guid": backend.messages()[0].body["message_guid"],
        "attachment_guid": "AT-9",
        "photo_id": "photo-1",
    }
    assert wait_until(lambda: len(backend.uploads()) == 1)


def test_upload_retry_command_uploads_again_and_reports(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, attachments: Path
) -> None:
    """`upload_retry` from /edge/sync reads the original file again and uploads it; the next
    sync carries attachment_uploaded with the command id. A malformed one fails as a command."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message("pic", sender=ALICE, chat=chat, attachments=[picture(attachments / "r.jpeg")])
    deliver_all(relay)
    guid = attachment_of(backend.messages()[0].body)["guid"]
    commands = [
        {"command_id": "c1", "command_type": "upload_retry", "params": {"attachment_guid": guid}},
        {"command_id": "c2", "command_type": "upload_retry", "params": {}},
    ]
    backend.script("/edge/sync", Behaviour(200, body={"commands": commands}))
    relay.sync_step(time.time())
    assert relay.photos_step(time.time()) == (1, None)  # the daemon's photos loop does this
    assert [r.headers["Idempotency-Key"] for r in backend.uploads()] == [guid, guid]
    relay.sync_step(time.time())
    events = backend.requests_to("/edge/sync")[-1].body["events"]
    by_type = {e["event_type"]: e for e in events}
    assert by_type["attachment_uploaded"]["command_id"] == "c1"
    assert by_type["attachment_uploaded"]["details"]["attachment_guid"] == guid
    assert by_type["command_failed"]["details"]["reason"] == "missing or malformed attachment_guid"


def test_only_the_chat_with_a_downloading_picture_waits(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, attachments: Path
) -> None:
    """A message whose picture is still in iCloud holds its own chat only: a later text in
    another chat is delivered meanwhile, and the next text of the same chat keeps its place
    behind the picture. Once Messages finishes the download, both go, in order."""
    alice, bob = writer.direct_chat(ALICE), writer.direct_chat("+15555550102")
    relay.capture_step(time.time())
    path = attachments / "IMG_7.jpeg"
    spec = AttachmentSpec(str(path), "image/jpeg", path.name, 0, "public.jpeg", 0, 1, "AT-7")
    writer.message("pic", sender=ALICE, chat=alice, attachments=[spec])
    writer.message("after the pic", sender=ALICE, chat=alice)
    writer.message("another chat", sender="+15555550102", chat=bob)
    relay.capture_step(time.time())
    now = time.monotonic()
    kinds = [relay.deliver_step(now).kind for _ in range(4)]
    assert [m.body["text"] for m in backend.messages()] == ["another chat"]
    assert "held" in kinds and kinds[-1] == "waiting"  # only Alice's chat is left, and it waits
    picture(path)
    writer.finish_download("AT-7")
    later = now + 2.0  # past the chat's short hold
    for _ in range(4):
        relay.deliver_step(later)
    assert [m.body["text"] for m in backend.messages()] == ["another chat", "pic", "after the pic"]
    assert attachment_of(backend.messages()[1].body)["status"] == "uploaded"


def test_picture_the_backend_keeps_failing_is_given_up_not_the_message(
    env: dict[str, str],
    tmp_path: Path,
    attachments: Path,
    writer: MessagesWriter,
    backend: StubBackend,
) -> None:
    """When uploads of one picture keep failing (500) while other messages are delivered, the
    picture is skipped as upload_failed_500 after ARCHETY_POISON_ATTEMPTS and its message, text
    and all, is delivered: not dead-lettered for a picture."""
    settings = config.load(environ={**env, "ARCHETY_POISON_ATTEMPTS": "2"}, cwd=tmp_path)
    alice, bob = writer.direct_chat(ALICE), writer.direct_chat("+15555550102")

    def work(relay: Relay) -> None:
        relay.capture_step(time.time())
        spec = picture(attachments / "x.jpeg")
        writer.message("see this", sender=ALICE, chat=alice, attachments=[spec])
        writer.message("meanwhile", sender="+15555550102", chat=bob)
        writer.message("and again", sender="+15555550102", chat=bob)
        relay.capture_step(time.time())
        backend.set_default("/photo/upload", Behaviour(500))
        now = time.monotonic()
        for step in range(12):
            relay.deliver_step(now + step * 5.0)  # each step past any backoff (max 0.5 s here)
        assert relay.store.dead_letters() == []

    relay_life(settings, work)
    texts = [m.body["text"] for m in backend.messages()]
    assert sorted(texts) == ["and again", "meanwhile", "see this"]
    pictured = next(m.body for m in backend.messages() if m.body["text"] == "see this")
    entry = attachment_of(pictured)
    assert (entry["status"], entry["skip_reason"]) == ("skipped", "upload_failed_500")


# Stands in for a decoder that crashes natively (libheif, a Pillow C decoder): loaded through
# PYTHONPATH by the daemon under test, it aborts the process when Pillow opens crash*.jpeg.
CRASHING_DECODER = """
import os
from PIL import Image

_open = Image.open


def _crashing_open(fp, *args, **kwargs):
    if os.path.basename(str(fp)).startswith("crash"):
        os.abort()
    return _open(fp, *args, **kwargs)


Image.open = _crashing_open
"""


def test_a_picture_that_kills_the_relay_is_given_up_after_two_tries(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    tmp_path: Path,
    attachments: Path,
) -> None:
    """A picture whose decoding aborts the process (as a libheif segfault would) takes the
    daemon down twice, as launchd's KeepAlive restarts it; the third life gives the picture up
    (`decoder_crashed`), delivers its message and another chat's text, and stays up: no crash
    loop (review 2026-12-04, #4)."""
    hook = tmp_path / "crashing-decoder"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASHING_DECODER)
    crashing = {"PYTHONPATH": str(hook)}
    alice, bob = writer.direct_chat(ALICE), writer.direct_chat(BOB)
    lives = [start_relay(crashing)]
    writer.message(
        "look", sender=ALICE, chat=alice, attachments=[picture(attachments / "crash.jpeg")]
    )
    assert lives[0].proc.wait(20) == -signal.SIGABRT
    writer.message("still there?", sender=BOB, chat=bob)
    lives.append(start_relay(crashing, ready=False))
    assert lives[1].proc.wait(20) == -signal.SIGABRT
    lives.append(start_relay(crashing, ready=False))
    # By text, not by count: the second life may abort after the backend took Bob's message
    # and before it was stored as delivered, so the third delivers it again (at least once).
    wanted = {"look", "still there?"}
    assert backend.wait_for(lambda b: wanted <= {m.body["text"] for m in b.messages()}, 20)
    by_text = {m.body["text"]: m.body for m in backend.messages()}
    entry = attachment_of(by_text["look"])
    assert (entry["status"], entry["skip_reason"]) == ("skipped", "decoder_crashed")
    assert "still there?" in by_text and backend.uploads() == []
    assert lives[2].proc.poll() is None
    assert [e["unfinished"] for e in log_events(lives[2].log, "photo_decoder_crashed")] == [2]


def test_one_unfinished_conversion_is_forgiven(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, attachments: Path
) -> None:
    """A process that died once while converting a picture (a reboot, a kill -9) does not cost
    the picture: it converts and uploads on the next try."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    spec = picture(attachments / "IMG_5.jpeg")
    writer.message("pic", sender=ALICE, chat=chat, attachments=[spec])
    relay.capture_step(time.time())
    item = relay.store.head()
    assert item is not None
    (entry,) = json.loads(item.body)["attachments"]
    relay.store.begin_conversion(entry["guid"], time.time())  # the life that died mid-decode
    deliver_all(relay)
    assert attachment_of(backend.messages()[0].body)["status"] == "uploaded"
    assert len(backend.uploads()) == 1


def break_the_attachment_table(writer: MessagesWriter) -> None:
    """What a macOS update that renames a column the relay reads would do to chat.db."""
    writer.conn.execute("ALTER TABLE attachment RENAME COLUMN ck_sync_state TO ck_state_v2")


def test_a_picture_step_that_raises_is_counted_and_holds_only_its_chat(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, attachments: Path
) -> None:
    """Preparing Alice's picture raises (chat.db's attachment table lost a column the relay
    reads). Her message is counted as attempted, so `skip-head` with no argument finds it;
    Bob's chat goes on, and no outage is declared (review 2026-12-04, #3)."""
    alice, bob = writer.direct_chat(ALICE), writer.direct_chat(BOB)
    relay.capture_step(time.time())
    writer.message(
        "see this", sender=ALICE, chat=alice, attachments=[picture(attachments / "y.jpeg")]
    )
    writer.message("hi", sender=BOB, chat=bob)
    relay.capture_step(time.time())
    break_the_attachment_table(writer)
    now = time.monotonic()
    kinds = [relay.deliver_step(now).kind for _ in range(3)]
    assert [m.body["text"] for m in backend.messages()] == ["hi"]
    assert "retry" in kinds and relay.lanes.failures == 0 and not relay.lanes.down
    head = relay.store.head()
    assert head is not None and head.attempts >= 1
    assert relay.store.skip(time.time()) == head.message_guid


def test_a_picture_step_that_keeps_raising_gives_up_the_pictures_not_the_text(
    env: dict[str, str],
    tmp_path: Path,
    attachments: Path,
    writer: MessagesWriter,
    backend: StubBackend,
) -> None:
    """After ARCHETY_POISON_ATTEMPTS failed picture steps, the message's pictures are skipped
    (`photo_step_failed`) and its text is delivered, in its place in the chat."""
    settings = config.load(environ={**env, "ARCHETY_POISON_ATTEMPTS": "3"}, cwd=tmp_path)
    alice = writer.direct_chat(ALICE)

    def work(relay: Relay) -> None:
        relay.capture_step(time.time())
        spec = picture(attachments / "z.jpeg")
        writer.message("see this", sender=ALICE, chat=alice, attachments=[spec])
        writer.message("and this", sender=ALICE, chat=alice)
        relay.capture_step(time.time())
        break_the_attachment_table(writer)
        now = time.monotonic()
        for step in range(8):
            relay.deliver_step(now + step * 5.0)  # each step past any backoff (max 0.5 s here)

    relay_life(settings, work)
    assert [m.body["text"] for m in backend.messages()] == ["see this", "and this"]
    entry = attachment_of(backend.messages()[0].body)
    assert (entry["status"], entry["skip_reason"]) == ("skipped", "photo_step_failed")
    assert backend.uploads() == []


def test_a_pillow_heif_that_does_not_import_blocks_no_chat(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    tmp_path: Path,
    attachments: Path,
) -> None:
    """The review's repro of #3, as the daemon: pillow-heif fails to import (a wheel that does
    not load on that macOS). Alice's JPEG is still converted and uploaded, her text and Bob's
    are delivered; the failure is said once."""
    hook = tmp_path / "no-heif"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import sys\nsys.modules['pillow_heif'] = None\n")
    alice, bob = writer.direct_chat(ALICE), writer.direct_chat(BOB)
    relay = start_relay({"PYTHONPATH": str(hook)})
    writer.message("photo", sender=ALICE, chat=alice, attachments=[picture(attachments / "a.jpeg")])
    writer.message("and text", sender=ALICE, chat=alice)
    writer.message("bob here", sender=BOB, chat=bob)
    assert backend.wait_for(lambda b: len(b.messages()) == 3, 20)
    by_text = {m.body["text"]: m.body for m in backend.messages()}
    assert sorted(by_text) == ["and text", "bob here", "photo"]
    assert attachment_of(by_text["photo"])["status"] == "uploaded"
    assert len(log_events(relay.log, "heif_unavailable")) == 1
