"""attributedBody decoding: real Messages.app blobs, our encoder, and damaged input."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from conftest import SHARED_FIXTURES

from archety_relay.chatdb import typedstream, voice

BLOBS = SHARED_FIXTURES / "attributed_body"
needs_real_blobs = pytest.mark.skipif(
    not (BLOBS / "expected.json").exists(), reason="../shared/fixtures not present"
)


@needs_real_blobs
@pytest.mark.parametrize(
    "name", ["AttributedBodyTextOnly.bin", "URL.bin", "MultiPart.bin", "Blank.bin"]
)
def test_real_blobs_decode_to_the_text_messages_app_stored(name: str) -> None:
    """Each blob written by Messages.app yields exactly the string imessage-exporter expects."""
    expected = json.loads((BLOBS / "expected.json").read_text())[name]
    assert typedstream.decode((BLOBS / name).read_bytes()) == expected


@needs_real_blobs
def test_encoder_writes_byte_for_byte_what_messages_app_writes() -> None:
    """Our encoder is checked against a real blob, so test databases hold realistic bodies."""
    real = (BLOBS / "AttributedBodyTextOnly.bin").read_bytes()
    assert typedstream.encode("Noter test") == real


@pytest.mark.parametrize(
    "text",
    [
        "hi",
        "x" * 127,
        "x" * 128,
        "é" * 20000,
        "emoji 😀👍🏽 and 中文",
        "line\nbreak\ttab",
        "q\"'\\",
    ],
)
def test_round_trip_for_every_length_encoding(text: str) -> None:
    """One-byte, int16 and int32 lengths, and multi-byte UTF-8, all come back unchanged."""
    assert typedstream.decode(typedstream.encode(text)) == text


def test_truncated_blob_salvages_the_characters_that_are_present() -> None:
    """A blob cut inside the text yields its readable start, without a half character."""
    blob = typedstream.encode("hello wörld, how are you")
    cut = blob.index("wö".encode()) + 2  # inside the two-byte ö
    assert typedstream.decode(blob[:cut]) == "hello w"


def test_blob_without_a_string_is_no_text() -> None:
    """Garbage, an empty blob and None all mean 'no text', never an exception."""
    assert typedstream.decode(b"") is None
    assert typedstream.decode(None) is None
    assert typedstream.decode(b"\x04\x0bstreamtyped\x81\xe8\x03garbage") is None


def test_ten_thousand_random_and_truncated_blobs_never_raise() -> None:
    """Fuzz: random bytes, truncations and bit flips of real-shaped blobs decode or give None."""
    rng = random.Random(20261126)
    base = typedstream.encode("the quick brown fox 🦊 jumps")
    for i in range(10_000):
        kind = i % 3
        if kind == 0:
            blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        elif kind == 1:
            blob = base[: rng.randrange(0, len(base))]
        else:
            mutable = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                mutable[rng.randrange(len(mutable))] = rng.getrandbits(8)
            blob = bytes(mutable)
        result = typedstream.decode(blob)
        assert result is None or isinstance(result, str)


# -- voice notes: the transcript attribute ------------------------------------------------------
# The public blob ReagentX/crabstep `src/test_data/Transcription` (GPL-3.0, not vendored): read
# from ../shared/fixtures/attributed_body/Transcription.bin or from a fetched crabstep checkout
# named by ARCHETY_CRABSTEP_TEST_DATA (its src/test_data folder); skipped when neither exists.
CRABSTEP_GUID = "4C339597-EBBB-4978-9B87-521C0471A848"


def _crabstep_transcription() -> bytes | None:
    candidates = [BLOBS / "Transcription.bin"]
    if folder := os.environ.get("ARCHETY_CRABSTEP_TEST_DATA"):
        candidates.append(Path(folder) / "Transcription")
    for path in candidates:
        if path.is_file():
            return path.read_bytes()
    return None


needs_crabstep = pytest.mark.skipif(
    _crabstep_transcription() is None, reason="crabstep's Transcription blob not fetched"
)


@needs_crabstep
def test_apples_transcript_is_read_from_the_public_voice_note_blob() -> None:
    """The real blob, as is: its transcript and the audio file it names."""
    real = _crabstep_transcription()
    assert typedstream.attribute_strings(real, "IMAudioTranscription") == ["This is a test"]
    assert typedstream.attribute_strings(real, "__kIMFileTransferGUIDAttributeName") == [
        CRABSTEP_GUID
    ]
    assert voice.transcript_in_body(real) == "This is a test"


@needs_crabstep
def test_voice_note_encoder_writes_byte_for_byte_the_public_blob() -> None:
    """Our encoder of a voice note's attributedBody matches the real one exactly, so the blobs
    tests and the demo write are the ones Messages writes."""
    assert typedstream.encode_voice(CRABSTEP_GUID, "This is a test") == _crabstep_transcription()


@pytest.mark.parametrize("transcript", ["This is a test", "é" * 300, "🎤 " * 70, "a"])
def test_transcripts_of_any_length_round_trip(transcript: str) -> None:
    """Short, long (two-byte lengths) and non-ASCII transcripts come back exactly; the body's
    text is still the attachment placeholder."""
    blob = typedstream.encode_voice("GUID-1", transcript)
    assert voice.transcript_in_body(blob) == transcript.strip()
    assert typedstream.decode(blob) == "\ufffc"


def test_a_note_not_yet_transcribed_has_no_transcript() -> None:
    """Without the attribute, and for damaged or truncated blobs: None, never an exception."""
    blob = typedstream.encode_voice("GUID-1", None)
    assert voice.transcript_in_body(blob) is None
    assert typedstream.attribute_strings(blob, "__kIMFileTransferGUIDAttributeName") == ["GUID-1"]
    full = typedstream.encode_voice("GUID-1", "hello there")
    for cut in range(len(full)):
        assert voice.transcript_in_body(full[:cut]) in (None, "hello there")
    assert voice.transcript_in_body(None) is None
