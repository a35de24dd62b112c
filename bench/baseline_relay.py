"""The baseline: a relay the way the one we replaced worked (and the seed's sample client).

Polls chat.db once a second for `ROWID > last`, skips rows whose `text` is NULL, and posts each
row with a fresh `requests.post`. Run by bench/run.py as a subprocess, next to archety-relay.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
import types

import requests

POLL_SECONDS = 1.0
stop = False


def on_term(_signum: int, _frame: types.FrameType | None) -> None:
    global stop
    stop = True


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    db, url, secret = (
        os.environ["ARCHETY_CHAT_DB"],
        os.environ["ARCHETY_BACKEND_URL"],
        os.environ["RELAY_WEBHOOK_SECRET"],
    )
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    last = conn.execute("SELECT COALESCE(MAX(ROWID), 0) FROM message").fetchone()[0]
    print("ready", flush=True)
    while not stop:
        rows = conn.execute(
            "SELECT m.ROWID, m.guid, m.text, h.id, m.date FROM message m "
            "LEFT JOIN handle h ON h.ROWID = m.handle_id WHERE m.ROWID > ? ORDER BY m.ROWID",
            (last,),
        ).fetchall()
        for rowid, guid, text, sender, _date in rows:
            last = rowid
            if text is None:
                continue
            body = {
                "chat_guid": f"iMessage;-;{sender}",
                "mode": "direct",
                "sender": sender,
                "text": text,
                "timestamp": int(time.time()),
                "participants": [sender],
                "message_guid": guid,
            }
            requests.post(
                url + "/orchestrator/message",
                data=json.dumps(body),
                headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
                timeout=30,
            )
        time.sleep(POLL_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
