"""Text from outside (backend answers, log fields, chat.db values) made safe to print.

A terminal obeys control characters: an ESC sequence in a dead letter's response could clear
the screen and print forged `status` lines. Every C0/C1 control (and the bidi overrides that
reorder what is shown) is written as a visible escape instead; ordinary text is unchanged.
"""

from __future__ import annotations

import re

# C0 (with DEL), C1, and the Unicode bidi embeddings/overrides/isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character shown as `\\xNN` / `\\uNNNN` (newlines and tabs too:
    one value must stay on one line)."""
    return _UNSAFE.sub(_visible, text)
