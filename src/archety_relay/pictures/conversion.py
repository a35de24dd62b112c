"""Pictures into what the backend takes: the only user of Pillow, pillow-heif and `sips`.

`convert(path or bytes, limits)` returns `Converted`: JPEG (PNG when the picture really has
transparency) bytes no larger than the limits, or no bytes and a fixed reason ("unreadable",
"too_large"). It never raises for a bad picture, whatever the file holds.

What leaves the Mac:
- the pixels turned upright (EXIF orientation applied; HEIC's `irot` is applied by libheif);
- the colour profile, when it is an RGB one (a CMYK or grey profile would mislabel RGB pixels);
- nothing else: no EXIF, GPS, XMP or comment. The output is encoded from a bare copy of the
  pixels with only the profile passed, so no metadata can ride along by default.

Hostile or huge files: Pillow's decompression-bomb limit stays on (and its warning zone counts as
too large); truncated files are not padded. Before a pixel is decoded, the header's size and mode
say what converting would cost (`decode_cost`); a picture over `Limits.max_decode_bytes` is too
large for Pillow. A picture Pillow refuses goes to the fallback (on macOS, Apple's own `sips`,
which decodes every format Messages writes, in its own process) and its output is normalised by
Pillow again. Conversions run one at a time (`one_at_a_time`): a 12 MP HEIC needs ~110 MB while
it decodes, and several at once must not stack up (docs/benchmarks.md).

Whatever goes wrong inside, even a Pillow or pillow-heif that does not import, `convert` gives
a reason and never raises: one picture must never hold up its message, let alone its chat.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("archety_relay.pictures")

UNREADABLE = "unreadable"
TOO_LARGE = "too_large"
JPEG = "image/jpeg"
PNG = "image/png"
EXTENSIONS = {JPEG: "jpg", PNG: "png"}

# Quality steps tried before the picture is made smaller, and how much smaller each round.
JPEG_QUALITIES = (85, 75, 65, 50, 35)
SHRINK = 0.75
# Below this long side a picture is no use to anyone; give up instead.
MIN_LONG_SIDE = 64
SIPS = Path("/usr/bin/sips")
SIPS_TIMEOUT_SECONDS = 60.0

# A fallback converts a file Pillow could not: path in, bytes of some picture out (or None).
Fallback = Callable[[Path, int], bytes | None]

# Re-entrant: `upload` holds it around a conversion and the mark that says one is running.
one_at_a_time = threading.RLock()
_heif_tried = False

# What converting one picture may cost in memory, judged from its header before decoding.
# An iPhone's largest photo (48 MP HEIF Max, 8064x6048) needs ~340 MB by `decode_cost` and
# measured 361 MB of peak RSS; anything larger goes to `sips` on a Mac (its own process).
DECODE_BUDGET_BYTES = 384 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_px: int = 1024  # long side
    max_bytes: int = 5 * 1024 * 1024
    max_decode_bytes: int = DECODE_BUDGET_BYTES


@dataclass(frozen=True)
class Converted:
    data: bytes | None
    mime: str | None
    reason: str | None  # None when `data` is set
    width: int = 0
    height: int = 0
    via: str = "pillow"  # "pillow" | "sips"

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.mime or "", "bin")


class _Refused(Exception):
    """Pillow would not (or must not) decode this picture; `reason` says which way."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def convert(source: Path | bytes, limits: Limits, fallback: Fallback | None = None) -> Converted:
    """One picture to upload-ready bytes, or a reason. Blocks while another conversion runs."""
    with one_at_a_time:
        try:
            return _convert(source, limits, fallback)
        except Exception as exc:  # a bug or a broken install costs this picture, nothing more
            log.warning(
                "picture_conversion_failed",
                error=type(exc).__name__,
                exc_info=True,
                hint="converting a picture failed outside the decoder; it is skipped as "
                "unreadable and its message goes on",
            )
            return Converted(None, None, UNREADABLE)


def _convert(source: Path | bytes, limits: Limits, fallback: Fallback | None) -> Converted:
    try:
        return _with_pillow(source, limits)
    except _Refused as refused:
        first = refused
    if fallback is None or not isinstance(source, Path):
        return Converted(None, None, first.reason)
    produced = fallback(source, limits.max_px)
    if produced is None:
        return Converted(None, None, first.reason)
    try:
        again = _with_pillow(produced, limits)
    except _Refused:
        return Converted(None, None, first.reason)
    return Converted(again.data, again.mime, None, again.width, again.height, via="sips")


def decode_cost(image_format: str | None, mode: str, alpha: bool, width: int, height: int) -> int:
    """Bytes of memory converting a picture of this header takes, at its peak: the decoded
    picture as Pillow stores it (RGB takes 4 bytes a pixel), the full-size working copy made
    before shrinking (`working_mode`; Pillow premultiplies RGBA and LA into one more copy to
    resize them), and libheif's own decoded copy for HEIF and AVIF, freed after the hand-over."""
    per_pixel = _stored_bytes(mode)
    working = working_mode(mode, alpha)
    if working != mode:
        per_pixel += _stored_bytes(working)
    if working in ("RGBA", "LA"):
        per_pixel += 4
    if image_format in ("HEIF", "AVIF"):
        per_pixel += _stored_bytes(mode)
    return width * height * per_pixel


def working_mode(mode: str, alpha: bool) -> str:
    """The mode a picture is shrunk in. Pillow resizes only some modes with a proper filter;
    the others are converted first, at full size, to the smallest mode that keeps what is sent:
    1-bit, 16-bit and 32-bit grey become L (Pillow's own way to RGB clips through L anyway:
    the same pixels, a quarter of the memory), palettes RGB, anything with alpha RGBA."""
    if mode in _RESIZABLE:
        return mode
    if alpha:
        return "RGBA"
    return "L" if mode in _GREY else "RGB"


def _stored_bytes(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4  # I, F and every multi-band mode: Pillow keeps RGB in 4 bytes a pixel


def default_fallback() -> Fallback | None:
    """`sips` on a Mac; nothing elsewhere (Linux CI has no second decoder to offer)."""
    if sys.platform == "darwin" and SIPS.exists():
        return sips_fallback(SIPS)
    return None


def sips_fallback(executable: Path) -> Fallback:
    """Apple's `sips`: `-s format jpeg -Z <px> <in> --out <dir>/out.jpg`, in a temporary dir.

    The output goes to a file inside a directory we created: sips writes a *file* named after
    a missing output directory. Success is judged by the output, not by the exit code alone.
    """

    def run(path: Path, max_px: int) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="archety-sips-") as tmp:
            out = Path(tmp) / "out.jpg"
            argv = [str(executable), "-s", "format", "jpeg", "-Z", str(max_px)]
            try:
                done = subprocess.run(
                    [*argv, str(path), "--out", str(out)],
                    capture_output=True,
                    timeout=SIPS_TIMEOUT_SECONDS,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                return None
            if done.returncode != 0 or b"Error" in done.stderr or not out.is_file():
                return None
            return out.read_bytes()

    return run


# -- Pillow --------------------------------------------------------------------------------------
def _register_heif() -> None:
    """Imported on first use: `--once` and the CLI should not pay for libheif at start-up.
    A pillow-heif that does not load (a wheel built for another macOS) is said once; pictures
    go on without it: JPEG and PNG convert, a HEIC goes to `sips` on a Mac."""
    global _heif_tried
    if _heif_tried:
        return
    _heif_tried = True
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except Exception as exc:
        log.warning(
            "heif_unavailable",
            error=f"{type(exc).__name__}: {exc}",
            hint="pillow-heif did not load: HEIC pictures are converted by sips on a Mac, else "
            "skipped as unreadable; reinstall the relay (`pip install --force-reinstall "
            "pillow-heif`) to fix it",
        )


def _with_pillow(source: Path | bytes, limits: Limits) -> Converted:
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        from PIL import Image
    except Exception as exc:
        raise _Refused(UNREADABLE, f"Pillow did not load: {type(exc).__name__}") from exc
    _register_heif()
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice that; both mean "too large" here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as img:
                if img.width * img.height > (Image.MAX_IMAGE_PIXELS or sys.maxsize):
                    raise _Refused(TOO_LARGE, f"{img.width}x{img.height} pixels")
                return _normalise(img, limits)
    except _Refused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
        raise _Refused(TOO_LARGE, str(exc)) from exc
    except Exception as exc:  # truncated, corrupt, unknown format: every decoder raises its own
        raise _Refused(UNREADABLE, f"{type(exc).__name__}: {exc}") from exc


def _normalise(img: Any, limits: Limits) -> Converted:
    from PIL import Image, ImageOps

    if img.format == "JPEG":
        # Decode big JPEGs at a reduced scale straight away (never below the target size).
        img.draft(img.mode, (limits.max_px, limits.max_px))
    alpha = _has_alpha(img)
    cost = decode_cost(img.format, img.mode, alpha, img.width, img.height)
    if cost > limits.max_decode_bytes:
        # Judged from the header: nothing is decoded yet.
        raise _Refused(TOO_LARGE, f"{img.width}x{img.height} {img.mode} needs {cost} bytes")
    icc = img.info.get("icc_profile")
    if img.mode not in _RESIZABLE:
        img = img.convert(working_mode(img.mode, alpha))
    # Shrink first, in place: every later copy (turning, converting) is then of a small picture.
    # A 12 MP photo decoded is 36 MB; three full-size copies of it were most of the peak.
    img.thumbnail((limits.max_px, limits.max_px), Image.Resampling.LANCZOS)
    upright = ImageOps.exif_transpose(img)
    if _has_alpha(upright):
        rgba = upright.convert("RGBA")
        lowest = rgba.getchannel("A").getextrema()[0]
        transparent = isinstance(lowest, (int, float)) and lowest < 255
        pixels = rgba if transparent else rgba.convert("RGB")
    else:
        pixels = upright.convert("RGB")
    mime = PNG if pixels.mode == "RGBA" else JPEG
    # A bare copy: info (exif, xmp, comment, dpi...) is not carried, only what we pass on save.
    bare = Image.new(pixels.mode, pixels.size)
    bare.paste(pixels)
    profile = icc if isinstance(icc, bytes) and icc[16:20] == b"RGB " else None
    data, size = _fit(bare, mime, profile, limits.max_bytes)
    if data is None:
        raise _Refused(TOO_LARGE, f"does not fit in {limits.max_bytes} bytes")
    return Converted(data, mime, None, size[0], size[1])


# Modes Pillow resizes with a proper filter; others (palette, 1-bit, 16-bit) are converted first.
_RESIZABLE = frozenset({"RGB", "RGBA", "L", "LA", "CMYK", "YCbCr", "RGBa", "La"})
_GREY = frozenset({"1", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def _has_alpha(img: Any) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _fit(img: Any, mime: str, icc: bytes | None, max_bytes: int) -> tuple[bytes | None, Any]:
    """Lower the quality, then the size, until the encoded picture fits in `max_bytes`."""
    from PIL import Image

    current = img
    while True:
        qualities = JPEG_QUALITIES if mime == JPEG else (None,)
        for quality in qualities:
            data = _encode(current, mime, icc, quality)
            if len(data) <= max_bytes:
                return data, current.size
        width, height = current.size
        smaller = (max(1, int(width * SHRINK)), max(1, int(height * SHRINK)))
        if max(smaller) < MIN_LONG_SIDE:
            return None, current.size
        current = img.resize(smaller, Image.Resampling.LANCZOS)


def _encode(img: Any, mime: str, icc: bytes | None, quality: int | None) -> bytes:
    out = io.BytesIO()
    options: dict[str, Any] = {"icc_profile": icc} if icc else {}
    if mime == JPEG:
        img.save(out, "JPEG", quality=quality, optimize=True, **options)
    else:
        img.save(out, "PNG", optimize=True, **options)
    return out.getvalue()


def describe(data: bytes) -> str:
    """For people: "1024x768 JPEG, no EXIF/GPS/XMP" (or what metadata it does carry)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            found = [k for k in ("exif", "xmp", "comment") if img.info.get(k)]
            if img.getexif().get_ifd(0x8825):
                found.append("GPS")
            carried = f"carries {'/'.join(found)}" if found else "no EXIF/GPS/XMP"
            return f"{img.width}x{img.height} {img.format}, {carried}"
    except Exception as exc:  # a description, never a failure
        return f"unreadable ({type(exc).__name__})"
