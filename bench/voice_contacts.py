"""Issue #18's two costs: what a voice note waiting for its transcript costs the other chats,
and what looking a sender up in Contacts costs per message.

    .venv/bin/python bench/voice_contacts.py           # bench/results/voice_contacts.json + docs
    .venv/bin/python bench/voice_contacts.py --smoke   # small sizes, no doc

1. Other chats: the real daemon (`archety-relay run`, a subprocess) against the loopback
   backend. Bob sends `messages` texts, one every `spacing` seconds, in his own chat; in the
   second run Alice's voice note, not transcribed yet, was written just before them, so her chat
   waits ARCHETY_TRANSCRIPT_WAIT (10 s) the whole time. Bob's latency (commit → backend) is
   compared between the two runs, and Alice's note is checked to have waited.
2. Contacts: an address book of `cards` cards (two numbers typed in several ways and an e-mail
   each), written the way Contacts keeps it; the index build (first lookup) and then the cost of
   `contacts.names.names_for` per message (direct, half the senders known; and an 8-person group).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from doc_section import write_section
from run import SENDER, percentile, rig

from archety_relay.chatdb import voice
from archety_relay.contacts.names import names_for
from archety_relay.contacts.reader import AddressBook
from archety_relay.demo.address_book import AddressBookWriter
from archety_relay.model import Message

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- voice-contacts:begin -->", "<!-- voice-contacts:end -->"
BOB = "+15555550102"


def other_chats(messages: int, spacing: float, with_voice_note: bool) -> dict[str, Any]:
    with rig("relay") as r:
        bob = r.writer.direct_chat(BOB)
        r.start()
        if with_voice_note:
            audio = r.dir / "Audio Message.caf"
            audio.write_bytes(voice.caf_file(3.0))
            r.writer.voice_note(sender=SENDER, chat=r.chat, filename=str(audio), guid="VOICE")
        voice_at = time.time()
        committed: dict[str, float] = {}
        for i in range(messages):
            guid = f"BOB-{i:04d}"
            r.writer.message(f"bob {i}", sender=BOB, chat=bob, guid=guid)
            committed[guid] = time.time()
            time.sleep(spacing)
        want = messages + (1 if with_voice_note else 0)
        got = r.backend.wait_for_messages(want, timeout=60)
        ms = [
            (m.at - committed[m.body["message_guid"]]) * 1000
            for m in got
            if m.body and m.body.get("message_guid") in committed
        ]
        voice_wait = [
            m.at - voice_at for m in got if m.body and m.body.get("message_guid") == "VOICE"
        ]
    return {
        "received": len(ms),
        "p50_ms": percentile(ms, 0.5),
        "p90_ms": percentile(ms, 0.9),
        "max_ms": max(ms),
        "voice_note_waited_s": round(voice_wait[0], 2) if voice_wait else None,
    }


def contacts_lookup(cards: int, lookups: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "AddressBook"
        book_file = AddressBookWriter(root)
        for i in range(cards):
            book_file.card(
                f"First{i}",
                f"Last{i}",
                phones=[f"+1 (555) {i // 10000:03d}-{i % 10000:04d}", f"(556) 555-{i % 10000:04d}"],
                emails=[f"Person{i}@Example.com"],
            )
        book_file.close()
        book = AddressBook(root, "US")
        started = time.perf_counter()
        assert book.name_for(f"+1555000{0:04d}") == "First0 Last0"
        build_ms = (time.perf_counter() - started) * 1000
        # 500 people writing (half of them with a card), as a busy persona's Mac sees them;
        # the first look at a handle parses it (libphonenumber), later ones hit a cache.
        direct = [
            Message(i, f"G{i}", "c", "direct", f"+1555000{(i % 500) * 20:04d}", "", 0, ())
            for i in range(lookups)
        ]
        fresh = [f"+1555{k:07d}" for k in range(1000, 1000 + min(lookups, 3000))]
        started = time.perf_counter()
        for handle in fresh:
            book.name_for(handle)
        first_look_us = round((time.perf_counter() - started) / len(fresh) * 1e6, 2)
        members = tuple(f"+1555000{k:04d}" for k in range(8))
        group = Message(0, "G", "c", "group", members[0], "", 0, members)
        per_direct = _per_call_us(lambda: [names_for(book, m) for m in direct], len(direct))
        per_group = _per_call_us(lambda: [names_for(book, group) for _ in range(lookups)], lookups)
    return {
        "cards": cards,
        "index_build_ms": round(build_ms, 1),
        "first_look_at_a_handle_us": first_look_us,
        "direct_us_per_message": per_direct,
        "group8_us_per_message": per_group,
    }


def _per_call_us(work: Any, calls: int) -> float:
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        work()
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return round(statistics.median(runs), 2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    messages, spacing, cards, lookups = (
        (10, 0.05, 200, 2000) if args.smoke else (40, 0.1, 5000, 20000)
    )
    figures = {
        "other_chats": {
            "without_voice_note": other_chats(messages, spacing, False),
            "with_voice_note_waiting": other_chats(messages, spacing, True),
        },
        "contacts": contacts_lookup(cards, lookups),
    }
    print(json.dumps(figures, indent=2))
    if args.smoke:
        return 0
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "voice_contacts.json").write_text(json.dumps(figures, indent=2) + "\n")
    base, held = (
        figures["other_chats"][k] for k in ("without_voice_note", "with_voice_note_waiting")
    )
    c = figures["contacts"]
    block = "\n".join(
        [
            BEGIN,
            "## Voice notes and Contacts (issue #18; `bench/voice_contacts.py`)",
            "",
            f"Bob's {messages} texts (one every {spacing} s) through the real daemon, while "
            "Alice's voice note waits for its transcript in her own chat, and without it:",
            "",
            "| run | Bob p50 | p90 | max | Alice's note waited |",
            "|---|---|---|---|---|",
            f"| no voice note | {base['p50_ms']:.0f} ms | {base['p90_ms']:.0f} ms | "
            f"{base['max_ms']:.0f} ms | – |",
            f"| voice note waiting | {held['p50_ms']:.0f} ms | {held['p90_ms']:.0f} ms | "
            f"{held['max_ms']:.0f} ms | {held['voice_note_waited_s']} s |",
            "",
            f"Contacts lookup, {c['cards']} cards (two numbers and an e-mail each): index built in "
            f"{c['index_build_ms']} ms (again only when a file changes, looked at most every "
            f"5 s); the first message of a new handle {c['first_look_at_a_handle_us']} µs "
            f"(parsing the number); then {c['direct_us_per_message']} µs per direct message "
            f"(500 people writing), {c['group8_us_per_message']} µs per 8-person group message.",
            END,
        ]
    )
    write_section(DOC, BEGIN, END, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
