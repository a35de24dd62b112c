"""The text inside `message.attributedBody`: an NSAttributedString archived as a NeXTSTEP typedstream.

Recent macOS leaves `message.text` NULL for most messages and keeps the text only here. We need one
field of the archive, the NSString's characters, so rather than a general typedstream parser (the one
on PyPI has not been released since 2023 and rejects truncated input outright) this reads exactly
that field and tolerates damage: a truncated blob yields the characters that are present, a corrupt
one yields None. It never raises.

Layout of the part we read (numbers are typedstream integers: one signed byte, or 0x81 + int16 LE,
or 0x82 + int32 LE):

    04 0b "streamtyped" 81 e8 03 ...class chain... "NSString" <version> <superclass ref>
    84 01 "+"            a new type encoding of length 1: "+" (a UTF-8 C string with a length)
    <length> <bytes>     the text, UTF-8

`encode()` writes the same layout Messages.app writes, for tests, the demo and the benchmarks.
"""

from __future__ import annotations

import struct

_SIGNATURE = b"\x04\x0bstreamtyped"
_STRING_CLASS = b"NSString"
_TEXT_TYPE = b"\x84\x01+"
# How far past the class name the "+" type encoding may sit (version byte, superclass reference).
_TYPE_SEARCH_WINDOW = 16

_INT16 = 0x81
_INT32 = 0x82


def decode(blob: bytes | None) -> str | None:
    """The text held by an attributedBody blob; None when there is none or it cannot be read."""
    if not blob:
        return None
    try:
        return _decode(bytes(blob))
    except (IndexError, ValueError, struct.error):
        return None


def _decode(blob: bytes) -> str | None:
    class_at = blob.find(_STRING_CLASS)
    if class_at < 0:
        return None
    search_from = class_at + len(_STRING_CLASS)
    type_at = blob.find(_TEXT_TYPE, search_from, search_from + _TYPE_SEARCH_WINDOW)
    if type_at < 0:
        return None
    length, start = _read_int(blob, type_at + len(_TEXT_TYPE))
    if length <= 0:
        return None
    raw = blob[start : start + length]
    text = raw.decode("utf-8", errors="replace")
    if len(raw) < length:
        # Truncated: the last character may have been cut in half; drop what cannot be read.
        text = text.rstrip("\ufffd")
    return text or None


def _read_int(blob: bytes, at: int) -> tuple[int, int]:
    """A typedstream integer at `at`: (value, offset just past it)."""
    head = blob[at]
    if head == _INT16:
        return struct.unpack_from("<h", blob, at + 1)[0], at + 3
    if head == _INT32:
        return struct.unpack_from("<i", blob, at + 1)[0], at + 5
    if head >= 0x80:
        raise ValueError("not an integer tag")
    return head, at + 1


def _write_int(value: int) -> bytes:
    if 0 <= value < 0x80:
        return bytes([value])
    if -0x8000 <= value < 0x8000:
        return bytes([_INT16]) + struct.pack("<h", value)
    return bytes([_INT32]) + struct.pack("<i", value)


# Everything up to the text's length, byte for byte as Messages.app writes a plain-text message.
_PREFIX = (
    _SIGNATURE
    + b"\x81\xe8\x03\x84\x01@\x84\x84\x84\x19NSMutableAttributedString\x00"
    + b"\x84\x84\x12NSAttributedString\x00\x84\x84\x08NSObject\x00\x85\x92"
    + b"\x84\x84\x84\x0fNSMutableString\x01\x84\x84\x08NSString\x01\x95"
    + _TEXT_TYPE
)
# The single attribute run covering the whole text: a message-part number 0.
_RUN_HEAD = b"\x86\x84\x02iI\x01"
_RUN_TAIL = (
    b"\x92\x84\x84\x84\x0cNSDictionary\x00\x95\x84\x01i\x01\x92\x84\x98\x98"
    + b"\x1d__kIMMessagePartAttributeName\x86\x92\x84\x84\x84\x08NSNumber\x00"
    + b"\x84\x84\x07NSValue\x00\x95\x84\x01*\x84\x9b\x9b\x00\x86\x86\x86"
)


def encode(text: str) -> bytes:
    """An attributedBody blob holding `text`, laid out as Messages.app lays out a plain message."""
    utf8 = text.encode("utf-8")
    utf16_units = len(text.encode("utf-16-le")) // 2
    return _PREFIX + _write_int(len(utf8)) + utf8 + _RUN_HEAD + _write_int(utf16_units) + _RUN_TAIL
