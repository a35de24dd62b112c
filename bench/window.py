"""The in-place change watch (edits, unsends, read receipts): its cost on a small and a huge chat.db.

    .venv/bin/python bench/window.py           # 1,000,000 history rows: results + docs section
    .venv/bin/python bench/window.py --smoke   # 5,000 rows, no doc

Each chat.db is built the way bench/run.py builds its large one (`MessagesWriter.fill_history`:
old messages spread over 400 days, checkpointed), then gets a busy recent window: 300 messages
over the last 20 minutes, 30 of them from the persona. `Changes.step(now)` (the relay's code:
the window read by `message_idx_date`, the fingerprint comparison, the state database) is timed
in-process, once per chat.db change as the daemon runs it: after an edit (one event stored), and
with nothing changed (what every other commit to chat.db costs). Both databases are looked at in
turn, so a busy moment of the shared machine falls on both; medians of `looks` rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from doc_section import write_section

from archety_relay import logs
from archety_relay.capture.changes import Changes
from archety_relay.chatdb.reader import ChatDb
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.store import open_store

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- window:begin -->", "<!-- window:end -->"
SENDER = "+15555550101"
RECENT = 300


class Rig:
    """A chat.db with `history` old rows and a busy recent window, and the relay's change watch."""

    def __init__(self, history: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bench-window-"))
        self.history = history
        self.writer = MessagesWriter(self.root / "chat.db")
        chat = self.writer.direct_chat(SENDER)
        started = time.perf_counter()
        if history:
            self.writer.fill_history(history, sender=SENDER, chat=chat)
        self.build_s = time.perf_counter() - started
        now = time.time()
        rows = [
            self.writer.message(
                f"recent message {i}",
                sender=None if i % 10 == 0 else SENDER,
                chat=chat,
                is_from_me=int(i % 10 == 0),
                sent_at=now - 1190 + i * 1190 / RECENT,
            )
            for i in range(RECENT)
        ]
        self.incoming = [r for i, r in enumerate(rows) if i % 10]
        self.store = open_store(self.root / "state")
        self.chatdb = ChatDb(self.writer.path)
        self.changes = Changes(self.chatdb, self.store)
        self.changes.step(time.time())  # first look: every recent row fingerprinted
        self.edited: list[float] = []
        self.unchanged: list[float] = []
        self.events = 0

    def look(self, i: int) -> None:
        """One edit, then the step that finds it; then a step with nothing changed."""
        self.writer.edit(self.incoming[-1 - i], f"edited {i}")
        t = time.perf_counter()
        self.events += self.changes.step(time.time()).emitted
        self.edited.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        self.changes.step(time.time())
        self.unchanged.append((time.perf_counter() - t) * 1000)

    def result(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "build_s": round(self.build_s, 1),
            "watched": self.changes.step(time.time()).watched,
            "events": self.events,
            "after_edit_ms": statistics.median(self.edited),
            "unchanged_ms": statistics.median(self.unchanged),
        }

    def close(self) -> None:
        self.chatdb.close()
        self.store.close()
        self.writer.close()
        shutil.rmtree(self.root, ignore_errors=True)


def measure(history: int, looks: int) -> dict[str, Any]:
    """Both chat.dbs looked at in turn, so the machine's noise falls on both alike."""
    rigs = [Rig(0), Rig(history)]
    try:
        for i in range(looks):
            for rig in rigs:
                rig.look(i)
        small, large = (rig.result() for rig in rigs)
    finally:
        for rig in rigs:
            rig.close()
    return {"looks": looks, "small": small, "large": large}


def section(r: dict[str, Any]) -> str:
    small, large = r["small"], r["large"]
    rows = [
        ("look after an edit (one event stored)", "after_edit_ms"),
        ("look with nothing changed", "unchanged_ms"),
    ]
    return "\n".join(
        [
            BEGIN,
            "## In-place changes (edits, unsends, read receipts)",
            "",
            "`bench/window.py`: `Changes.step`, run on every chat.db change, re-reads the last 20 "
            "minutes by `message_idx_date` and compares each row's fingerprint: "
            f"{small['watched']} and {large['watched']} rows here ({RECENT} messages written "
            "over the last 20 minutes, a tenth of them the persona's, less those that aged out "
            "while the large database was built, which adds "
            "its history's own last 20 minutes). Median of "
            f"{r['looks']} looks, on chat.db with no history and with {large['history']:,} history "
            "rows (built like bench/run.py's large database), looked at in turn.",
            "",
            f"| figure | no history | {large['history']:,} history rows | ratio |",
            "|---|---|---|---|",
            *[
                f"| {label} | {small[key]:.2f} ms | {large[key]:.2f} ms | "
                f"{large[key] / small[key]:.2f}× |"
                for label, key in rows
            ],
            "",
            "The cost follows the window, not the file: the query walks the date index from "
            "20 minutes ago, so the million old rows are never read; `date_edited` and "
            "`date_read` have no index, and the same question asked of them directly is a "
            "full scan (153 ms on 500,000 rows, ../shared/notes/chatdb-events.md). The step runs "
            "only when `PRAGMA data_version` says chat.db changed, so an idle relay pays nothing "
            "for it; an unchanged window costs no state-database write (the fingerprints are "
            "mirrored in memory).",
            END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    logs.configure(log_file=None, console=None, level=logging.WARNING)
    history, looks = (5_000, 5) if args.smoke else (1_000_000, 30)
    result = {**measure(history, looks), "started": time.strftime("%Y-%m-%d %H:%M")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "window.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.smoke:
        write_section(DOC, BEGIN, END, section(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
