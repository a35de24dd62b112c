"""What the orchestrator's answer asks us to say, as a plan of timed bubbles. Pure functions.

Every shape the backend has used is accepted; unknown fields are ignored, missing ones tolerated:

    {"should_respond": true, "reply_text": "…"}
    {"should_respond": true, "reply_bubbles": ["…", "…"]}
    {"should_respond": true, "reflex_message": "…", "burst_messages": ["…"], "burst_delay_ms": 2000}
    {"should_respond": true, "reply_text": "…", "attachments": [{"url": "…", "filename": "…"}]}

Files (issue #19) go after the text, in the order given, each a bubble of its own; the text is
optional when there are files. A malformed `attachments` field sends no file (the reason is the
plan's) but the text still goes.

`should_respond` false or absent, or a body that is not JSON: nothing is sent (and the caller
logs why). Bubbles after the first are spaced by a short natural gap. Reading an answer never
raises (a 2xx must always be recordable, or the message would be posted again and again), and
its text is cleaned (`model.clean_text`) so that it can always be stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model import FileToSend, clean_text
from . import answers, files

BUBBLE_GAP_SECONDS = 1.2
MAX_BURST_DELAY_SECONDS = 60.0
MAX_BUBBLES = 20


@dataclass(frozen=True)
class Bubble:
    text: str
    delay: float  # seconds after the reply arrived
    file: FileToSend | None = None  # a file bubble: text is ""


@dataclass(frozen=True)
class ReplyPlan:
    bubbles: tuple[Bubble, ...]
    reason: str  # why nothing is sent, or which shape was read


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    texts = (clean_text(v) for v in value if isinstance(v, str))
    return [t for t in texts if t.strip()]


def _burst_delay(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    if value >= MAX_BURST_DELAY_SECONDS * 1000:  # also an int too large for a float
        return MAX_BURST_DELAY_SECONDS
    return float(value) / 1000.0 if value > 0 else 0.0


def plan(body: str) -> ReplyPlan:
    try:
        data = answers.loads(body)
    except ValueError:
        return ReplyPlan((), "not_json")
    try:
        return _plan(data)
    except Exception:  # an unforeseen shape is "nothing to say", never a failed delivery
        return ReplyPlan((), "unreadable")


def _plan(data: Any) -> ReplyPlan:
    if not isinstance(data, dict):
        return ReplyPlan((), "not_an_object")
    if data.get("should_respond") is not True:
        return ReplyPlan((), "should_not_respond")

    bubbles: list[Bubble] = []
    reflex = _texts(data.get("reflex_message"))
    burst = _texts(data.get("burst_messages"))
    if reflex or burst:
        bubbles += [Bubble(t, i * BUBBLE_GAP_SECONDS) for i, t in enumerate(reflex)]
        start = _burst_delay(data.get("burst_delay_ms"))
        if start is None:
            start = len(reflex) * BUBBLE_GAP_SECONDS
        bubbles += [Bubble(t, start + i * BUBBLE_GAP_SECONDS) for i, t in enumerate(burst)]
        shape = "reflex_burst"
    else:
        texts = _texts(data.get("reply_bubbles")) or _texts(data.get("reply_text"))
        bubbles = [Bubble(t, i * BUBBLE_GAP_SECONDS) for i, t in enumerate(texts)]
        shape = "reply_bubbles" if data.get("reply_bubbles") else "reply_text"
    bubbles = bubbles[:MAX_BUBBLES]
    attached = files.parse_attachments(data.get("attachments"))
    if isinstance(attached, str):
        shape = f"{shape}; attachments ignored: {attached}"
        attached = ()
    files_at = max(b.delay for b in bubbles) + BUBBLE_GAP_SECONDS if bubbles else 0.0
    bubbles += [Bubble("", files_at + i * BUBBLE_GAP_SECONDS, f) for i, f in enumerate(attached)]
    if not bubbles:
        return ReplyPlan((), "nothing_to_say")
    if not bubbles[0].text:
        shape = "attachments"
    return ReplyPlan(tuple(bubbles), shape)
