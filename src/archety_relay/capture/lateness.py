"""Late message or iCloud back-fill? A pure rule over what a new row's arrival looks like.

The evidence (../shared/notes/chatdb-events.md §i): iCloud re-inserts old history as new rows
with new GUIDs, dated hours to days ago (1,958 rows in one report, 0 sharing a GUID with an
earlier row, most 21–48 h old), in bunches, into chats that already hold newer messages; the
people who sent them read them long ago on another device. A Mac that was offline for twenty
minutes instead receives the messages it missed once, dated minutes ago, unread, and newer
than anything its chat already had.

So a row dated more than `LATE_AFTER_SECONDS` ago is:
- `backfill` (skipped, counted in status, reported as `message_skipped`) if any of:
  - it is already read (someone read it long ago, on another device);
  - it is a twin: its chat already holds an incoming message of the same sender, with the same
    text and exactly the same date (a re-inserted copy keeps its original's date);
  - it is more than `BUNCH_MIN_AGE_SECONDS` old and its chat already held an *incoming* message
    dated at or after it before it arrived: history landing behind the conversation, not news.
    The persona's own messages do not count (they answer what arrived, not what iCloud
    restores), and a row younger than the floor is not judged this way: APNs does deliver a
    person's message after the one they sent next, minutes late and unread (review 2026-12-04
    #2), while the restored history of the evidence is 21–48 h old;
  - at least `BUNCH_SIZE` old rows arrived together (in one read or within
    `BUNCH_WINDOW_SECONDS`; each old row is held `BUNCH_WAIT_SECONDS` after it is first seen,
    so a bunch committed row by row is counted whole) and it is more than
    `BUNCH_MIN_AGE_SECONDS` old: a whole chat's
    history restored. The age floor keeps a catch-up after a short outage (a busy group's
    missed messages, all minutes old, each newer than what its chat had) on the late side;
- else `late`: forwarded, with `delayed_s` so the backend can decide how to answer.

Rows older than ARCHETY_MAX_MESSAGE_AGE are `too_old` before this rule is asked.
"""

from __future__ import annotations

from dataclasses import dataclass

# Younger than this, a row is simply new (delivery and clock skew take seconds).
LATE_AFTER_SECONDS = 120.0
# This many old rows arriving together, each older than the floor, are history being restored.
BUNCH_SIZE = 10
BUNCH_WINDOW_SECONDS = 60.0
BUNCH_MIN_AGE_SECONDS = 3600.0
# An old row is held this long after it is first seen, so a bunch committed a row at a time
# is counted whole (capture holds it like a row waiting for its chat join).
BUNCH_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class Arrival:
    age_s: float  # now - the row's date
    together: int  # old rows arriving with it (itself included)
    chat_had_newer: bool  # its chat already held an incoming message dated at or after it
    is_read: bool
    twin: bool = False  # its chat already held a copy: same sender, date and text


def verdict(arrival: Arrival) -> str | None:
    """None (on time), `late` (forward with delayed_s) or `backfill` (skip)."""
    if arrival.age_s < LATE_AFTER_SECONDS:
        return None
    if arrival.is_read or arrival.twin:
        return "backfill"
    if arrival.age_s < BUNCH_MIN_AGE_SECONDS:
        return "late"  # minutes late and unread: a person's message, whatever came after it
    if arrival.chat_had_newer or arrival.together >= BUNCH_SIZE:
        return "backfill"
    return "late"
