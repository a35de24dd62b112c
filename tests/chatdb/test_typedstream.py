"""attributedBody decoding: real Messages.app blobs, our encoder, and damaged input."""

from __future__ import annotations

import json
import random

import pytest
from conftest import SHARED_FIXTURES

from archety_relay.chatdb import typedstream

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
