"""Voice notes reach the persona as what was said: Apple's transcript, read from either place
macOS keeps it, waited for a little while holding only the note's own chat, and reported later
when it comes late. Audio is never sent to /photo/upload. Rows are written the way Messages
writes them (`MessagesWriter.voice_note`, whose attributedBody matches the public blob)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ALICE, BOB

from archety_relay.chatdb import voice
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.relay import Relay


def deliver_all(relay: Relay, later: float = 0.0) -> list[str]:
    """Capture, then run delivery steps (`later` seconds on: past a chat's short hold) until
    nothing more goes now; the kinds of steps."""
    relay.capture_step(time.time())
    kinds = []
    for _ in range(10):
        kind = relay.deliver_step(time.monotonic() + later).kind
        kinds.append(kind)
        if kind not in ("delivered", "held"):
            break
    return kinds


def body_of(backend: StubBackend, guid: str) -> dict[str, Any]:
    (found,) = [m.body for m in backend.messages() if m.body["message_guid"] == guid]
    return found


def recording(tmp_path: Path, seconds: float = 4.2) -> str:
    """A voice note's CAF file where Messages keeps attachments (beside chat.db)."""
    folder = tmp_path / "Messages" / "Attachments" / "4f" / "15"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Audio Message.caf"
    path.write_bytes(voice.caf_file(seconds))
    return str(path)


def alice_sends_a_voice_note(
    make_relay: Callable[..., Relay],
    writer: MessagesWriter,
    tmp_path: Path,
    guid: str,
    env: dict[str, str] | None = None,
    **note: Any,
) -> tuple[Relay, int]:
    """A relay (with `env`) watching Alice's chat, then her voice note as Messages writes it."""
    relay = make_relay(**(env or {}))
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    rowid = writer.voice_note(
        sender=ALICE, chat=chat, filename=recording(tmp_path), guid=guid, **note
    )
    return relay, rowid


def test_transcript_in_the_attributed_body_is_the_text(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """A note transcribed before it was captured (IMAudioTranscription in attributedBody): the
    persona gets the words as `text`, and the entry says voice, the transcript, its source and
    the recording's length; the audio is not uploaded."""
    relay, _ = alice_sends_a_voice_note(
        make_relay,
        writer,
        tmp_path,
        "V1",
        transcript="Running ten minutes late, order for me",
    )
    deliver_all(relay)
    got = body_of(backend, "V1")
    assert (got["kind"], got["text"]) == ("voice", "Running ten minutes late, order for me")
    (entry,) = got["attachments"]
    assert entry["kind"] == "voice"
    assert entry["transcript"] == "Running ten minutes late, order for me"
    assert entry["transcript_source"] == "apple"
    assert entry["duration_s"] == 4.2
    assert (entry["is_photo"], entry["skip_reason"]) == (False, "unsupported_type")
    assert backend.uploads(accepted_only=False) == []


def test_transcript_in_the_attachment_user_info_is_read_too(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """The other place: attachment.user_info's `audio-transcription` (what imsg reads)."""
    relay, _ = alice_sends_a_voice_note(
        make_relay,
        writer,
        tmp_path,
        "V2",
        transcript="call me when you land",
        transcript_in="user_info",
    )
    deliver_all(relay)
    got = body_of(backend, "V2")
    assert got["text"] == "call me when you land"
    assert got["attachments"][0]["transcript_source"] == "apple"


def test_waiting_for_a_transcript_holds_only_its_own_chat(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """A note not yet transcribed waits (ARCHETY_TRANSCRIPT_WAIT): Bob's text in another chat
    goes meanwhile, Alice's next text stays behind her note; once macOS writes the transcript,
    the note goes with it, then her text."""
    relay = make_relay(ARCHETY_TRANSCRIPT_WAIT="300")
    alice, bob = writer.direct_chat(ALICE), writer.direct_chat(BOB)
    relay.capture_step(time.time())
    rowid = writer.voice_note(sender=ALICE, chat=alice, filename=recording(tmp_path), guid="V3")
    writer.message("and one more thing", sender=ALICE, chat=alice, guid="A2")
    writer.message("unrelated", sender=BOB, chat=bob, guid="B1")
    kinds = deliver_all(relay)
    assert [m.body["message_guid"] for m in backend.messages()] == ["B1"]
    assert "held" in kinds
    writer.transcribe(rowid, "pick up milk please")
    deliver_all(relay, later=2.0)
    assert [m.body["message_guid"] for m in backend.messages()] == ["B1", "V3", "A2"]
    assert body_of(backend, "V3")["text"] == "pick up milk please"


def test_a_late_transcript_goes_as_an_event(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """Past the wait the note goes with `text: ""` and `transcript: null`; when macOS writes the
    transcript later, the next sync carries `voice_transcribed` {message_guid, chat_guid,
    details: {text}}, once."""
    relay, rowid = alice_sends_a_voice_note(
        make_relay, writer, tmp_path, "V4", env={"ARCHETY_TRANSCRIPT_WAIT": "0"}
    )
    deliver_all(relay)
    got = body_of(backend, "V4")
    assert (got["kind"], got["text"]) == ("voice", "")
    assert got["attachments"][0]["transcript"] is None
    assert relay.photos_step(time.time() + 5)[0] == 0  # nothing yet
    writer.transcribe(rowid, "sorry, running late", where="user_info")
    assert relay.photos_step(time.time() + 10)[0] == 1  # the daemon's follow-up loop does this
    assert relay.photos_step(time.time() + 20)[0] == 0
    relay.sync_step(time.time())
    events = [e for e in backend.sync_events() if e["event_type"] == "voice_transcribed"]
    assert [(e["message_guid"], e["chat_guid"], e["details"]) for e in events] == [
        ("V4", f"iMessage;-;{ALICE}", {"text": "sorry, running late"})
    ]


def test_upload_retry_of_a_voice_note_never_uploads_audio(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """An `upload_retry` naming a voice note's attachment is answered `attachment_unavailable`
    (`unsupported_type`); nothing reaches /photo/upload."""
    relay, _ = alice_sends_a_voice_note(
        make_relay,
        writer,
        tmp_path,
        "V5",
        attachment_guid="AUDIO-5",
        transcript="hi",
    )
    deliver_all(relay)
    command = {
        "command_id": "c1",
        "command_type": "upload_retry",
        "params": {"attachment_guid": "AUDIO-5"},
    }
    backend.script("/edge/sync", Behaviour(200, body={"commands": [command]}))
    relay.sync_step(time.time())
    relay.photos_step(time.time())
    relay.sync_step(time.time())
    (event,) = [e for e in backend.sync_events() if e["event_type"] == "attachment_unavailable"]
    assert event["details"]["reason"] == "unsupported_type"
    assert backend.uploads(accepted_only=False) == []
