"""Voice notes: Apple's on-device transcript and the recording's length, read from values.

A voice note is a row with `message.is_audio_message = 1` and one audio attachment (Opus in a
CAF file, uti `com.apple.coreaudio-format`; imessage-exporter `tables/attachment.rs`). macOS
transcribes it on the device and keeps the text in one of two places, both read here:

- `message.attributedBody`: the U+FFFC run's attributes carry `IMAudioTranscription` next to
  `__kIMFileTransferGUIDAttributeName` (a real blob: ReagentX/crabstep
  `src/test_data/Transcription`, "This is a test"; imessage-exporter issue #374);
- `attachment.user_info`: a binary plist dict whose `audio-transcription` key holds the text
  (steipete/imsg `MessageStore+Attachments.swift` `audioTranscription(for:)`, its PR #14).

Which one a given macOS fills, and how long after the row, was not seen on a real Mac: both are
read, and a note without one waits a little (ARCHETY_TRANSCRIPT_WAIT, see delivery.contents).
"""

from __future__ import annotations

import struct

from . import typedstream
from .plists import plist_dict

TRANSCRIPT_ATTRIBUTE = "IMAudioTranscription"
USER_INFO_KEY = "audio-transcription"
AUDIO_UTIS = frozenset({"com.apple.coreaudio-format", "public.audio", "com.apple.m4a-audio"})
_AUDIO_EXTENSIONS = (".caf", ".m4a", ".amr", ".mp3", ".aac", ".wav", ".opus")


def is_audio(mime_type: str | None, uti: str | None, name: str | None) -> bool:
    if (mime_type or "").lower().startswith("audio/") or (uti or "").lower() in AUDIO_UTIS:
        return True
    return (name or "").lower().endswith(_AUDIO_EXTENSIONS)


def transcript_in_body(blob: bytes | None) -> str | None:
    """The transcript inside attributedBody, or None (no blob, no attribute, or damaged)."""
    for found in typedstream.attribute_strings(blob, TRANSCRIPT_ATTRIBUTE):
        if found and found.strip():
            return found.strip()
    return None


def transcript_in_user_info(blob: bytes | None) -> str | None:
    """The transcript in an attachment's user_info plist, or None."""
    value = plist_dict(blob).get(USER_INFO_KEY)
    return value.strip() if isinstance(value, str) and value.strip() else None


def caf_duration(data: bytes) -> float | None:
    """Seconds of audio in a Core Audio Format file, from its `desc` and `pakt` chunks
    (Apple's "Core Audio Format Specification"): valid frames / sample rate, else for a
    constant bit rate the data size in packets. None when the header cannot be read."""
    if data[:4] != b"caff":
        return None
    at = 8
    rate = 0.0
    bytes_per_packet = frames_per_packet = 0
    valid_frames: int | None = None
    data_bytes: int | None = None
    try:
        while at + 12 <= len(data):
            kind = data[at : at + 4]
            (size,) = struct.unpack_from(">q", data, at + 4)
            body = at + 12
            if kind == b"desc":
                rate, _fmt, _flags, bytes_per_packet, frames_per_packet = struct.unpack_from(
                    ">d4sIII", data, body
                )
            elif kind == b"pakt":
                _packets, valid_frames = struct.unpack_from(">qq", data, body)
            elif kind == b"data":
                data_bytes = (len(data) - body if size < 0 else size) - 4  # less mEditCount
            if size < 0:
                break
            at = body + size
    except struct.error:
        return None
    if rate <= 0:
        return None
    if valid_frames is not None and valid_frames > 0:
        return round(valid_frames / rate, 2)
    if data_bytes and bytes_per_packet and frames_per_packet:
        return round(data_bytes // bytes_per_packet * frames_per_packet / rate, 2)
    return None


def caf_file(seconds: float, sample_rate: float = 48000.0) -> bytes:
    """A small CAF file of `seconds` (Opus, variable packets, a `pakt` chunk), laid out as
    Messages records a voice note: for tests and the demo."""
    frames = int(seconds * sample_rate)
    desc = struct.pack(">d4sIIIII", sample_rate, b"opus", 0, 0, 960, 1, 0)
    packets = max(1, frames // 960)
    table = bytes([40]) * packets  # each packet's size, one byte each (a variable-length int)
    pakt = struct.pack(">qqii", packets, frames, 0, 0) + table
    audio = b"\x00\x00\x00\x00" + bytes(40 * packets)
    chunks = b"".join(
        name + struct.pack(">q", len(body)) + body
        for name, body in ((b"desc", desc), (b"pakt", pakt), (b"data", audio))
    )
    return b"caff" + struct.pack(">HH", 1, 0) + chunks
