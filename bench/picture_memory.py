"""Pictures that are small on disk and huge in memory: peak RSS of converting each one.

    .venv/bin/python bench/picture_memory.py    # bench/results/picture_memory.json + docs

The three files of review 2026-12-04 (finding 11): 9459x9459 pixels, just under Pillow's
decompression-bomb limit, in 16-bit grey (PNG), 32-bit float (TIFF) and RGBA (PNG), each well
under 1 MB on disk; and for scale an iPhone-sized 48 MP RGB picture. Each is converted by
`conversion.convert` (default limits, no sips) in a fresh Python process, which reports its own
RSS high-water mark (VmHWM) and the outcome. About 20 s in all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from doc_section import write_section

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
RESULTS = HERE / "results" / "picture_memory.json"
BEGIN, END = "<!-- picture-memory:begin -->", "<!-- picture-memory:end -->"
SIDE = 9459

# Peak RSS of the same conversions on main at 570fc3c, before the decode budget (measured the
# same way on 2026-12-04; the review's own figures were 569, 791 and 740 MB).
BEFORE_MB = {"big_i16.png": 571, "big_f.tif": 792, "big_rgba.png": 741, "rgb48.png": 241}

CHILD = r"""
import json, sys, time
from pathlib import Path
from archety_relay.pictures import conversion
def status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0
started = time.perf_counter()
out = conversion.convert(Path(sys.argv[1]), conversion.Limits())
print(json.dumps({"peak_rss_mb": status_mb("VmHWM"), "s": time.perf_counter() - started,
                  "reason": out.reason, "size": [out.width, out.height]}))
"""


def make(folder: Path) -> dict[str, str]:
    from PIL import Image

    pictures = {
        "big_i16.png": ("I;16", (SIDE, SIDE), 300, {}),
        "big_f.tif": ("F", (SIDE, SIDE), 0.5, {"compression": "tiff_deflate"}),
        "big_rgba.png": ("RGBA", (SIDE, SIDE), (10, 200, 30, 128), {}),
        "rgb48.png": ("RGB", (8064, 6048), (10, 200, 30), {}),
    }
    for name, (mode, size, colour, options) in pictures.items():
        Image.new(mode, size, colour).save(folder / name, **options)
    return {name: f"{mode} {size[0]}x{size[1]}" for name, (mode, size, _c, _o) in pictures.items()}


def measure() -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="archety-picture-memory-") as tmp:
        folder = Path(tmp)
        for name, what in make(folder).items():
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(folder / name)],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
            child = json.loads(done.stdout)
            rows.append(
                {
                    "file": name,
                    "picture": what,
                    "disk_kb": round((folder / name).stat().st_size / 1024),
                    "before_mb": BEFORE_MB[name],
                    "peak_rss_mb": round(child["peak_rss_mb"]),
                    "outcome": child["reason"] or "x".join(map(str, child["size"])),
                }
            )
    return rows


def section(rows: list[dict[str, Any]]) -> str:
    lines = [
        BEGIN,
        "## Pictures small on disk, huge in memory",
        "",
        "`bench/picture_memory.py`: each picture converted in a fresh process (default limits, "
        "no sips); peak RSS of that process (VmHWM), before and after the decode budget.",
        "",
        "| picture | on disk | peak RSS before | peak RSS now | outcome now |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['picture']} | {r['disk_kb']} KB | {r['before_mb']} MB | "
            f"{r['peak_rss_mb']} MB | {r['outcome']} |"
        )
    lines += [
        "",
        "What converting costs is judged from the header before a pixel is decoded "
        "(`conversion.decode_cost`: Pillow keeps RGB and RGBA in 4 bytes a pixel, premultiplies "
        "RGBA into a second copy to shrink it, and libheif holds its own copy of a HEIC); above "
        "384 MiB the picture is too large for Pillow and goes to `sips` on a Mac, in its own "
        "process. 16-bit and 32-bit grey are shrunk as 8-bit grey, the same pixels as before "
        "without a full-size RGB copy. The largest photo an iPhone takes (48 MP HEIF Max) "
        "stays inside the budget: ~340 MB by the estimate, 361 MB of measured peak RSS.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    rows = measure()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    write_section(DOC, BEGIN, END, section(rows))
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
