"""One named section of docs/benchmarks.md, replaced in place (bench/report.py keeps it)."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(doc: Path, begin: str, end: str, block: str) -> None:
    """Replace the text between `begin` and `end` (markers included) by `block`, or append it."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)
