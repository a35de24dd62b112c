"""Pictures made in the tests, through the real Pillow / pillow-heif conversion."""

from __future__ import annotations

import io
import json
import struct
import sys
import threading
import zlib
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image, ImageCms
from structlog.testing import capture_logs

from archety_relay.pictures import conversion
from archety_relay.pictures.conversion import Limits

pillow_heif.register_heif_opener()

ORIENTATION = 0x0112
GPS_IFD = 0x8825
LIMITS = Limits()
RED, BLUE = (230, 20, 20), (20, 20, 230)


def two_halves(width: int = 200, height: int = 100) -> Image.Image:
    """Left half red, right half blue: which way up it comes out shows the orientation."""
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(Image.new("RGB", (width // 2, height), RED), (0, 0))
    return img


def exif_with(orientation: int | None = None, gps: bool = False) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    if gps:
        exif[GPS_IFD] = {1: "N", 2: (37.0, 46.0, 30.0), 3: "W", 4: (122.0, 25.0, 10.0)}
    return exif


def encoded(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def open_result(data: bytes | None) -> Image.Image:
    assert data is not None
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def bomb_png(width: int, height: int, mode: str = "1") -> bytes:
    """A PNG whose header claims width x height pixels of `mode` over the data of 8x8: any
    decoding would fail, so a refusal for size is made from the header alone."""
    small = encoded(Image.new(mode, (8, 8)), "PNG")
    ihdr = struct.pack(">II", width, height) + small[24:29]
    chunk = b"IHDR" + ihdr
    return (
        small[:8]
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + small[33:]
    )


FAKE_SIPS = """#!{python}
import json, os, sys
from PIL import Image
with open(os.environ["FAKE_SIPS_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_SIPS_FAIL"):
    sys.stderr.write("Error: unable to read\\n")
    sys.exit(1)
out = sys.argv[sys.argv.index("--out") + 1]
Image.new("RGB", (300, 200), (20, 200, 20)).save(out, "JPEG")
"""


@pytest.fixture
def fake_sips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    exe = tmp_path / "bin" / "sips"
    exe.parent.mkdir()
    exe.write_text(FAKE_SIPS.replace("{python}", sys.executable))
    exe.chmod(0o755)
    calls = tmp_path / "sips-calls.jsonl"
    monkeypatch.setenv("FAKE_SIPS_LOG", str(calls))
    return exe, calls


def test_heic_becomes_upright_jpeg_without_metadata(tmp_path: Path) -> None:
    """An iPhone-style HEIC (rotated, with GPS) arrives as an upright JPEG with no EXIF at all."""
    source = tmp_path / "IMG_1.heic"
    source.write_bytes(
        encoded(two_halves(), "HEIF", exif=exif_with(6, gps=True).tobytes(), quality=90)
    )
    result = conversion.convert(source, LIMITS)
    assert result.reason is None and result.mime == "image/jpeg" and result.extension == "jpg"
    img = open_result(result.data)
    assert img.format == "JPEG"
    assert img.size == (100, 200)  # turned upright: the stored left half is now on top
    assert near(img.getpixel((50, 20)), RED) and near(img.getpixel((50, 180)), BLUE)
    assert not img.getexif() and "exif" not in img.info
    assert b"Exif\x00\x00" not in (result.data or b"")


def test_jpeg_exif_orientation_applied_and_gps_xmp_comment_removed(tmp_path: Path) -> None:
    """EXIF orientation 6 is applied to the pixels; GPS, XMP and comments never leave the Mac."""
    source = tmp_path / "IMG_2.jpg"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>lat 37.7749</rdf:RDF></x:xmpmeta>'
    source.write_bytes(
        encoded(
            two_halves(),
            "JPEG",
            exif=exif_with(6, gps=True),
            xmp=xmp,
            comment=b"taken at home",
            quality=95,
        )
    )
    with Image.open(source) as original:  # the source really carries GPS
        assert original.getexif().get_ifd(GPS_IFD)
    result = conversion.convert(source, LIMITS)
    img = open_result(result.data)
    assert img.size == (100, 200)
    assert near(img.getpixel((50, 20)), RED) and near(img.getpixel((50, 180)), BLUE)
    data = result.data or b""
    assert not img.getexif()
    for marker in (b"Exif\x00\x00", b"http://ns.adobe.com/xap", b"37.7749", b"taken at home"):
        assert marker not in data


def test_rgb_colour_profile_is_kept(tmp_path: Path) -> None:
    """The picture's RGB ICC profile travels with it (colours stay right on the other side)."""
    profile = srgb_profile()
    source = tmp_path / "p3.jpg"
    source.write_bytes(encoded(two_halves(), "JPEG", icc_profile=profile))
    img = open_result(conversion.convert(source, LIMITS).data)
    assert img.info.get("icc_profile") == profile


def test_cmyk_picture_becomes_rgb_without_its_cmyk_profile(tmp_path: Path) -> None:
    """A CMYK JPEG is converted to RGB; a CMYK profile would mislabel it, so it is dropped."""
    fake_cmyk_profile = b"\x00" * 16 + b"CMYK" + b"\x00" * 108
    source = tmp_path / "print.jpg"
    source.write_bytes(
        encoded(
            Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG", icc_profile=fake_cmyk_profile
        )
    )
    result = conversion.convert(source, LIMITS)
    img = open_result(result.data)
    assert img.mode == "RGB" and "icc_profile" not in img.info


def test_transparent_png_stays_png_with_alpha(tmp_path: Path) -> None:
    """A sticker with real transparency is sent as PNG, alpha intact."""
    img = Image.new("RGBA", (120, 80), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (60, 80), (*RED, 255)), (0, 0))
    source = tmp_path / "sticker.png"
    source.write_bytes(encoded(img, "PNG"))
    result = conversion.convert(source, LIMITS)
    assert result.mime == "image/png" and result.extension == "png"
    out = open_result(result.data)
    assert out.mode == "RGBA"
    assert out.getpixel((100, 40))[3] == 0 and out.getpixel((10, 40))[3] == 255


def test_opaque_png_with_alpha_channel_becomes_jpeg(tmp_path: Path) -> None:
    """An alpha channel that is fully opaque is no reason for a heavy PNG: it goes as JPEG."""
    source = tmp_path / "screenshot.png"
    source.write_bytes(encoded(Image.new("RGBA", (120, 80), (*BLUE, 255)), "PNG"))
    result = conversion.convert(source, LIMITS)
    assert result.mime == "image/jpeg" and open_result(result.data).mode == "RGB"


def test_long_side_capped_at_max_px(tmp_path: Path) -> None:
    """A 3000x2000 photo comes out 1024 px on its long side, aspect kept; a smaller cap is obeyed."""
    source = tmp_path / "big.jpg"
    source.write_bytes(encoded(two_halves(3000, 2000), "JPEG"))
    assert open_result(conversion.convert(source, LIMITS).data).size == (1024, 683)
    result = conversion.convert(source, Limits(max_px=300))
    assert (result.width, result.height) == (300, 200) == open_result(result.data).size


def test_byte_cap_lowers_quality_then_size(tmp_path: Path) -> None:
    """Noise does not compress: the output still fits the byte cap, smaller than asked if need be."""
    noise = Image.frombytes("RGB", (800, 800), bytes(range(256)) * 7500)
    source = tmp_path / "noise.png"
    source.write_bytes(encoded(noise.effect_spread(50), "PNG"))
    result = conversion.convert(source, Limits(max_px=1024, max_bytes=40_000))
    assert result.reason is None and len(result.data or b"") <= 40_000
    assert open_result(result.data).size[0] <= 800


def test_byte_cap_impossible_is_too_large(tmp_path: Path) -> None:
    """When even a tiny version cannot fit, the picture is skipped as too_large, not sent."""
    source = tmp_path / "a.jpg"
    source.write_bytes(encoded(two_halves(), "JPEG"))
    assert conversion.convert(source, Limits(max_bytes=50)) == conversion.Converted(
        None, None, "too_large"
    )


def test_truncated_jpeg_and_heic_are_unreadable(tmp_path: Path) -> None:
    """A half-written file is skipped as unreadable, never padded out or allowed to crash."""
    jpeg = encoded(two_halves(1200, 900).effect_spread(20), "JPEG")
    heic = encoded(two_halves(1200, 900).effect_spread(20), "HEIF")
    for name, data in (("cut.jpg", jpeg), ("cut.heic", heic)):
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        assert conversion.convert(path, LIMITS).reason == "unreadable", name


def test_not_a_picture_is_unreadable() -> None:
    """Bytes that are no picture at all give a reason, not an exception."""
    assert conversion.convert(b"caff\x00\x01 not an image", LIMITS).reason == "unreadable"
    assert conversion.convert(b"", LIMITS).reason == "unreadable"


def test_decompression_bomb_is_too_large_without_decoding(tmp_path: Path) -> None:
    """A header claiming 60000x60000 pixels is refused as too_large (Pillow's limit stays on),
    and so is one in Pillow's warning zone (between its limit and twice that)."""
    for side in (60_000, 10_000):
        path = tmp_path / f"bomb{side}.png"
        path.write_bytes(bomb_png(side, side))
        assert conversion.convert(path, LIMITS).reason == "too_large", side


def test_gif_sends_its_first_frame(tmp_path: Path) -> None:
    """An animated GIF goes as its first frame."""
    frames = [Image.new("RGB", (40, 40), c) for c in (RED, BLUE)]
    source = tmp_path / "anim.gif"
    source.write_bytes(encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    img = open_result(conversion.convert(source, LIMITS).data)
    assert near(img.getpixel((20, 20)), RED, tolerance=60)


def test_sips_fallback_runs_when_pillow_refuses(
    tmp_path: Path, fake_sips: tuple[Path, Path]
) -> None:
    """What Pillow refuses goes through sips (here a stand-in executable) and is normalised again."""
    exe, calls = fake_sips
    bomb = tmp_path / "pano.png"
    bomb.write_bytes(bomb_png(60_000, 60_000))
    result = conversion.convert(bomb, LIMITS, conversion.sips_fallback(exe))
    assert result.reason is None and result.via == "sips" and result.mime == "image/jpeg"
    assert open_result(result.data).size == (300, 200)
    (argv,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argv[:5] == ["-s", "format", "jpeg", "-Z", "1024"] and argv[5] == str(bomb)
    assert argv[6] == "--out" and Path(argv[7]).name == "out.jpg"


def test_sips_failure_keeps_the_first_reason(
    tmp_path: Path, fake_sips: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When sips fails too, the picture is skipped with Pillow's reason."""
    exe, _calls = fake_sips
    monkeypatch.setenv("FAKE_SIPS_FAIL", "1")
    path = tmp_path / "cut.jpg"
    path.write_bytes(encoded(two_halves(), "JPEG")[:300])
    assert conversion.convert(path, LIMITS, conversion.sips_fallback(exe)).reason == "unreadable"
    missing = conversion.sips_fallback(tmp_path / "no-such-sips")
    assert conversion.convert(path, LIMITS, missing).reason == "unreadable"


def test_conversions_run_one_at_a_time(tmp_path: Path) -> None:
    """Two conversions never overlap: each fallback waits at a two-party barrier that only a
    second, simultaneous conversion could complete, so with one-at-a-time both time out."""
    barrier = threading.Barrier(2, timeout=0.5)
    overlapped: list[bool] = []

    def fallback(_path: Path, _px: int) -> bytes | None:
        try:
            barrier.wait()
            overlapped.append(True)
        except threading.BrokenBarrierError:
            overlapped.append(False)
            barrier.reset()
        return None

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    threads = [
        threading.Thread(target=conversion.convert, args=(bad, LIMITS, fallback)) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert overlapped == [False, False]


def test_header_alone_refuses_a_picture_too_costly_to_decode(tmp_path: Path) -> None:
    """A small file whose header says 9000x9000 RGBA (under Pillow's pixel limit, but ~650 MB
    to shrink: Pillow keeps RGBA in 4 bytes a pixel and premultiplies a second copy) is refused
    as too_large from its header, before a pixel is decoded (a decode would find no data and
    say unreadable)."""
    path = tmp_path / "wide.png"
    path.write_bytes(bomb_png(9000, 9000, "RGBA"))
    assert conversion.convert(path, LIMITS).reason == "too_large"


def test_decode_budget_is_the_limit(tmp_path: Path) -> None:
    """The memory budget decides: a real 600x400 transparent PNG (~1.9 MB to shrink) is
    refused under a 1 MB budget and converted, transparency kept, under a 2 MB one."""
    img = Image.new("RGBA", (600, 400), (20, 200, 20, 90))
    path = tmp_path / "glass.png"
    path.write_bytes(encoded(img, "PNG"))
    assert conversion.convert(path, Limits(max_decode_bytes=1_000_000)).reason == "too_large"
    result = conversion.convert(path, Limits(max_decode_bytes=2_000_000))
    assert result.mime == "image/png" and open_result(result.data).mode == "RGBA"


@pytest.mark.parametrize(
    ("header", "fits"),
    [
        (("HEIF", "RGB", False, 8064, 6048), True),  # an iPhone's 48 MP HEIF Max photo
        (("HEIF", "RGB", False, 4032, 3024), True),  # its 12 MP photo
        (("PNG", "I;16", False, 9459, 9459), True),  # 16-bit grey shrinks as 8-bit grey
        (("PNG", "RGBA", True, 9459, 9459), False),  # 0.37 MB on disk, 0.74 GB to convert
        (("TIFF", "F", False, 9459, 9459), False),  # 0.67 MB on disk, 0.79 GB to convert
    ],
)
def test_decode_cost_keeps_every_camera_photo_and_refuses_the_review_pictures(
    header: tuple[str, str, bool, int, int], fits: bool
) -> None:
    """The budget lets through the largest photo an iPhone takes and stops the three small
    files the review measured at 0.57-0.79 GB of RSS (review 2026-12-04, finding 11)."""
    assert (conversion.decode_cost(*header) <= conversion.DECODE_BUDGET_BYTES) is fits


def test_sixteen_bit_grey_comes_out_as_before(tmp_path: Path) -> None:
    """16-bit grey is shrunk as 8-bit grey: the pixels are Pillow's own RGB conversion (values
    past 255 clip), now without a full-size RGB copy."""
    img = Image.new("I;16", (400, 100), 100)
    img.paste(Image.new("I;16", (200, 100), 40000), (200, 0))
    path = tmp_path / "depth.png"
    path.write_bytes(encoded(img, "PNG"))
    out = open_result(conversion.convert(path, LIMITS).data)
    assert out.mode == "RGB"
    assert near(out.getpixel((50, 50)), (100, 100, 100), tolerance=2)
    assert near(out.getpixel((350, 50)), (255, 255, 255), tolerance=2)


def test_a_pillow_heif_that_does_not_load_costs_no_jpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pillow-heif wheel that does not import (one built for another macOS) is said once,
    and conversion goes on without it: a JPEG still converts, nothing raises."""
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` fails
    monkeypatch.setattr(conversion, "_heif_tried", False)
    source = tmp_path / "IMG_1.jpeg"
    source.write_bytes(encoded(two_halves(), "JPEG"))
    with capture_logs() as logs:
        first = conversion.convert(source, LIMITS)
        second = conversion.convert(source, LIMITS)
    assert first.mime == second.mime == "image/jpeg"
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["heif_unavailable"]


def test_a_failure_outside_the_decoder_is_a_reason_not_an_exception(tmp_path: Path) -> None:
    """Whatever breaks inside a conversion (here a fallback that raises), `convert` returns a
    reason: the picture is skipped, its message and chat go on."""

    def broken(_path: Path, _px: int) -> bytes | None:
        raise RuntimeError("boom")

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    with capture_logs() as logs:
        assert conversion.convert(bad, LIMITS, broken).reason == "unreadable"
    assert [e["event"] for e in logs] == ["picture_conversion_failed"]
