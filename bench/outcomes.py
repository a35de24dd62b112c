"""The cost of watching the persona's sends (receipts, late failures) and of a /metrics scrape.

    .venv/bin/python bench/outcomes.py            # 1,000,000 history rows
    .venv/bin/python bench/outcomes.py --smoke    # 5,000 rows

A chat.db is built the way bench/window.py builds its large one (`fill_history`: old messages
over 400 days), then gets a busy day: 2,000 messages over the last 24 hours, 500 of them from
the persona. `Outcomes.step(now)` (the relay's code: a day of the persona's sends read through
`message_idx_date`, compared with the mirrored states) is timed in-process with nothing changed
(what every commit to chat.db costs) and after one receipt (one event stored). A relay over the
same files serves /metrics on loopback; a scrape and a /healthz are timed over HTTP.
Medians of `--rounds`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from archety_relay import config, logs
from archety_relay.capture.outcomes import Outcomes
from archety_relay.chatdb.reader import ChatDb
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.health import server as health_server
from archety_relay.relay import Relay
from archety_relay.store import open_store

SENDER = "+15555550101"
DAY = 2000
OWN_EVERY = 4


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    logs.configure(log_file=None, console=None, level=logging.WARNING)
    history = 5_000 if args.smoke else 1_000_000
    root = Path(tempfile.mkdtemp(prefix="bench-outcomes-"))
    try:
        writer = MessagesWriter(root / "chat.db")
        chat = writer.direct_chat(SENDER)
        started = time.perf_counter()
        writer.fill_history(history, sender=SENDER, chat=chat)
        now = time.time()
        rows = [
            writer.message(
                f"today {i}",
                sender=None if i % OWN_EVERY == 0 else SENDER,
                chat=chat,
                is_from_me=int(i % OWN_EVERY == 0),
                sent_at=now - 86000 + i * 86000 / DAY,
                columns={"is_delivered": 0, "date_delivered": 0} if i % OWN_EVERY == 0 else None,
            )
            for i in range(DAY)
        ]
        own = [r for i, r in enumerate(rows) if i % OWN_EVERY == 0]
        writer.checkpoint()
        build_s = time.perf_counter() - started
        store = open_store(root / "state")
        chatdb = ChatDb(writer.path)
        outcomes = Outcomes(chatdb, store)
        outcomes.step(time.time() - 90000)  # the watch began yesterday: today's rows are news
        outcomes.step(time.time())
        unchanged, receipt = [], []
        for i in range(args.rounds):
            t = time.perf_counter()
            outcomes.step(time.time())
            unchanged.append(time.perf_counter() - t)
            writer.mark_delivered(own[i])
            t = time.perf_counter()
            found = outcomes.step(time.time())
            receipt.append(time.perf_counter() - t)
            assert found["message_delivered"] == 1, found
        env = {
            "RELAY_WEBHOOK_SECRET": "bench-secret-0123456789",
            "ARCHETY_BACKEND_URL": "http://127.0.0.1:9",
            "ARCHETY_CHAT_DB": str(writer.path),
            "ARCHETY_STATE_DIR": str(root / "state"),
            "ARCHETY_LOG_FILE": str(root / "relay.log"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        }
        settings = config.load(environ=env, cwd=root)
        relay = Relay(settings, chatdb, store)
        relay.health_step(time.time())
        with socket.socket() as probe:  # a free port: the Mac's own relay may hold the default
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = health_server.bind(port, lambda: relay.health_snapshot(time.time()))
        assert server is not None
        threading.Thread(target=server.serve, daemon=True).start()
        scrape, health, size = [], [], 0
        for _ in range(args.rounds):
            t = time.perf_counter()
            with urllib.request.urlopen(server.url + "/metrics") as answer:
                size = len(answer.read())
            scrape.append(time.perf_counter() - t)
            t = time.perf_counter()
            with urllib.request.urlopen(server.url + "/healthz") as answer:
                answer.read()
            health.append(time.perf_counter() - t)
        in_process = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            health_server.make_app(lambda: relay.health_snapshot(time.time()))(
                {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"}, lambda *a: None
            )
            in_process.append(time.perf_counter() - t)
        server.stop()
        print(
            json.dumps(
                {
                    "history_rows": history,
                    "rows_in_day": DAY,
                    "persona_sends_in_day": len(own),
                    "build_s": round(build_s, 1),
                    "rounds": args.rounds,
                    "step_unchanged_ms_median": median_ms(unchanged),
                    "step_one_receipt_ms_median": median_ms(receipt),
                    "scrape_http_ms_median": median_ms(scrape),
                    "scrape_bytes": size,
                    "healthz_http_ms_median": median_ms(health),
                    "metrics_app_in_process_ms_median": median_ms(in_process),
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
