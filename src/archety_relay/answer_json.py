"""The backend's JSON answers, parsed so that one poison value cannot spoil the whole answer.

Two ways `json.loads` fails on an answer whose other parts are fine: arrays or objects nested
about 1,000 deep raise RecursionError (not ValueError), and one integer literal of more than
4,300 digits raises ValueError for the whole document (Python's int-from-string limit), which
would drop every command and acknowledgement beside it. Here deep nesting is "not JSON" like
any other syntax error, and an integer that long is read as a float (infinity), so only the
value holding it is refused, by the code that checks that value.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_INT_DIGITS = 4000


def _int(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_INT_DIGITS else float(text)


def loads(text: str | bytes) -> Any:
    """Like json.loads (NaN and Infinity accepted, as there); raises ValueError only."""
    try:
        return json.loads(text, parse_int=_int)
    except RecursionError:
        raise ValueError("JSON nested deeper than the parser's stack") from None
