"""The backend's JSON answers, parsed so that one poison value cannot spoil the whole answer.

Two ways `json.loads` fails on an answer whose other parts are fine: arrays or objects nested
about 1,000 deep raise RecursionError (not ValueError), and one integer literal of more than
4,300 digits raises ValueError for the whole document (Python's int-from-string limit), which
would drop every command and acknowledgement beside it. Here an integer that long is read as a
float (infinity), and a value nested deeper than MAX_DEPTH is read as null: only the value
holding it is then refused, by the code that checks that value.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_INT_DIGITS = 4000
# Deeper than any answer the backend means to send; far below the parser's recursion limit.
MAX_DEPTH = 64


def _int(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_INT_DIGITS else float(text)


def loads(text: str | bytes) -> Any:
    """Like json.loads (NaN and Infinity accepted, as there); raises ValueError only."""
    try:
        return json.loads(text, parse_int=_int)
    except RecursionError:
        pass
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:  # only answers that were too deep pay for this pass
        return json.loads(_cut_deep(text, MAX_DEPTH), parse_int=_int)
    except RecursionError:
        raise ValueError("JSON nested deeper than the parser's stack") from None


def _cut_deep(text: str, max_depth: int) -> str:
    """`text` with every array or object that opens below `max_depth` levels replaced by null.
    Strings are skipped whole, so brackets inside them do not count."""
    out: list[str] = []
    depth = 0
    i, n = 0, len(text)
    start = 0
    while i < n:
        ch = text[i]
        if ch == '"':
            i = _string_end(text, i)
            continue
        if ch in "[{":
            if depth == max_depth:
                out.append(text[start:i])
                out.append("null")
                i = start = _value_end(text, i)
                continue
            depth += 1
        elif ch in "]}":
            depth -= 1
        i += 1
    out.append(text[start:])
    return "".join(out)


def _string_end(text: str, i: int) -> int:
    """The index after the string literal opening at `i` (the end of `text` if it never closes)."""
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == '"':
            return j + 1
        else:
            j += 1
    return len(text)


def _value_end(text: str, i: int) -> int:
    """The index after the array or object opening at `i`."""
    depth = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i = _string_end(text, i)
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)
