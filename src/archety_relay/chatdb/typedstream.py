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

One more field is read for voice notes: a string value in the text's attribute dictionary
(`attribute_strings(blob, "IMAudioTranscription")`), found after its key written out by name
(see there). `encode_voice()` writes a voice note's blob byte for byte as the public crabstep
test data `Transcription` holds it.
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


# -- attributes of the text: what voice notes carry next to their U+FFFC --------------------
# A string value in an attribute dictionary: [type "@"] 84 <class> <type "+"> <len> <utf8> 86,
# where class and type are back-references (one byte >= 0x92) once NSString and "+" were seen.
_NEW = 0x84
_NIL = 0x85
_END = 0x86
_REF = 0x92


def attribute_strings(blob: bytes | None, key: str) -> list[str | None]:
    """The string value of every literal `key` attribute in the blob, in order (None for a value
    that is not a readable string). A key repeated in a later run is archived as a reference,
    not by name, so only its first run is found: enough for a voice note's single run."""
    if not blob:
        return []
    data = bytes(blob)
    needle = _write_int(len(key.encode())) + key.encode() + bytes([_END])
    found: list[str | None] = []
    at = data.find(needle)
    while at >= 0:
        try:
            found.append(_string_at(data, at + len(needle)))
        except (IndexError, ValueError, struct.error):
            found.append(None)
        at = data.find(needle, at + 1)
    return found


def _string_at(blob: bytes, at: int) -> str | None:
    if blob[at] == _NEW and blob[at + 1 : at + 3] == b"\x01@":
        at += 3  # the "@" type written out (first object of the stream)
    elif blob[at] >= _REF:
        at += 1  # the "@" type by reference
    if blob[at] != _NEW:
        return None
    at = _skip_class(blob, at + 1)
    if blob[at : at + 3] == _TEXT_TYPE:
        at += 3
    elif blob[at] >= _REF:
        at += 1
    else:
        return None
    length, start = _read_int(blob, at)
    raw = blob[start : start + length]
    if length <= 0 or len(raw) < length or blob[start + length] != _END:
        return None
    return raw.decode("utf-8", errors="replace")


def _skip_class(blob: bytes, at: int) -> int:
    """Past an object's class: a reference, or classes written out (name, version) ending in
    nil or a reference to their superclass."""
    if blob[at] != _NEW:
        return at + 1
    while blob[at] == _NEW:
        at += 1
        if blob[at] == _NEW:  # a new shared string: the class name
            length, at = _read_int(blob, at + 1)
            at += length
        else:
            at += 1  # the name by reference
        _, at = _read_int(blob, at)  # the class version
    return at + 1


def _string_object(text: str) -> bytes:
    utf8 = text.encode("utf-8")
    return b"\x92\x84\x96\x96" + _write_int(len(utf8)) + utf8 + bytes([_END])


# A voice note's blob up to its attribute count, and after its file's attributes: byte for byte
# as in the public crabstep test data `src/test_data/Transcription` (an NSAttributedString of one
# U+FFFC whose run names the audio file's transfer guid and Apple's transcript).
_VOICE_HEAD = (
    _SIGNATURE
    + b"\x81\xe8\x03\x84\x01@\x84\x84\x84\x12NSAttributedString\x00"
    + b"\x84\x84\x08NSObject\x00\x85\x92\x84\x84\x84\x08NSString\x01\x94"
    + _TEXT_TYPE
    + b"\x03\xef\xbf\xbc\x86\x84\x02iI\x01\x01\x92\x84\x84\x84\x0cNSDictionary\x00\x94\x84\x01i"
)
_VOICE_TAIL = (
    _string_object("__kIMBaseWritingDirectionAttributeName")
    + b"\x92\x84\x84\x84\x08NSNumber\x00\x84\x84\x07NSValue\x00\x94\x84\x01*\x84\x84\x01q\x9d\xff\x86"
    + _string_object("__kIMMessagePartAttributeName")
    + b"\x92\x84\x9f\x9c\xa1\x9d\x00\x86\x86\x86"
)


def encode_voice(file_transfer_guid: str, transcript: str | None) -> bytes:
    """A voice note's attributedBody as Messages writes it: U+FFFC whose attributes name the
    audio attachment and, once macOS transcribed it, carry `IMAudioTranscription`."""
    pairs = [("__kIMFileTransferGUIDAttributeName", file_transfer_guid)]
    if transcript:
        pairs.append(("IMAudioTranscription", transcript))
    body = b"".join(_string_object(k) + _string_object(v) for k, v in pairs)
    return _VOICE_HEAD + _write_int(len(pairs) + 2) + body + _VOICE_TAIL
