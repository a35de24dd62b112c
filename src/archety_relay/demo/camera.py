"""Plays the iPhone camera for the demo and the benchmarks: a HEIC photo as an iPhone writes it
(sideways pixels with an orientation to apply, GPS in its EXIF), made with Pillow + pillow-heif;
and the picture the demo's persona sends back (`menu_card`, a small PNG)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

ORIENTATION = 0x0112
GPS_IFD = 0x8825


def iphone_photo(path: Path, size: tuple[int, int] = (1600, 1200), quality: int = 80) -> Path:
    """Write a HEIC photo with a gradient sky, a sun, and GPS coordinates in its EXIF."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    width, height = size
    sky = Image.linear_gradient("L").resize(size)
    img = Image.merge(
        "RGB",
        (
            sky.point(lambda v: 90 + v // 2),
            sky.point(lambda v: 140 + v // 3),
            sky.point(lambda v: 255 - v // 4),
        ),
    )
    draw = ImageDraw.Draw(img)
    r = min(width, height) // 8
    draw.ellipse((width // 2 - r, height // 3 - r, width // 2 + r, height // 3 + r), (250, 200, 60))
    # The sensor's pixels lie on their side; orientation 6 turns them upright for display.
    img = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # held sideways, as a phone records it
    exif[GPS_IFD] = {1: "N", 2: (37.0, 46.0, 30.0), 3: "W", 4: (122.0, 25.0, 10.0)}
    out = io.BytesIO()
    img.save(out, format="HEIF", exif=exif.tobytes(), quality=quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())
    return path


def menu_card(size: tuple[int, int] = (360, 480)) -> bytes:
    """A small PNG, tonight's menu on a card: what the demo's stand-in backend serves for the
    persona to send."""
    img = Image.new("RGB", size, (250, 244, 230))
    draw = ImageDraw.Draw(img)
    width, height = size
    draw.rectangle((12, 12, width - 13, height - 13), outline=(120, 80, 40), width=4)
    draw.text((40, 40), "Tonight", fill=(120, 80, 40))
    for line, dish in enumerate(("risotto", "grilled trout", "tiramisu")):
        draw.text((40, 90 + line * 40), f"- {dish}", fill=(60, 40, 20))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
