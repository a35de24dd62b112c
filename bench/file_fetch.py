"""What a slow file download for one chat costs the other chats' sends (issue #19).

    .venv/bin/python bench/file_fetch.py           # bench/results/file_fetch.json + docs
    .venv/bin/python bench/file_fetch.py --smoke   # small sizes, no doc

The real daemon's threads (in-process `Daemon`: dispatcher, fetch and send threads) with a
loopback backend and a loopback file server. Bob gets `rounds` sends one after another (a
`send_message` each, the next once the last reached Messages); his latency is the time from the
command being stored to the send reaching Messages (a stand-in that writes the sent row into
chat.db, as Messages does). Three runs:
  - no file: Bob alone;
  - slow file: Alice's picture is being fetched the whole time from a server that trickles a
    byte every 50 ms for `hold` seconds (the fetch runs off the dispatcher's step);
  - slow file, step waits: the same, with the dispatcher's step waiting for the fetch it
    started (`fetch_wait` set to the fetch deadline), which is how every fetch ran before.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from doc_section import write_section
from run import percentile

from archety_relay import config, logs
from archety_relay.backend.commands import SendNow
from archety_relay.backend.files import FETCH_DEADLINE_SECONDS
from archety_relay.daemon import Daemon
from archety_relay.demo.messages_writer import AttachmentSpec, MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.macos.messages_app import SendResult
from archety_relay.model import FileToSend
from archety_relay.store import open_store

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- file-fetch:begin -->", "<!-- file-fetch:end -->"
ALICE, BOB = "+15555550101", "+15555550102"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16


class Trickle(ThreadingHTTPServer):
    """Serves PNG: a byte every 50 ms for `hold` seconds, then the rest."""

    daemon_threads = True

    def __init__(self, hold: float) -> None:
        self.hold = hold
        super().__init__(("127.0.0.1", 0), _TrickleHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _TrickleHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Trickle

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        ends, sent = time.monotonic() + self.server.hold, 0
        while time.monotonic() < ends:
            self.wfile.write(PNG[sent : sent + 1])
            self.wfile.flush()
            sent += 1
            time.sleep(0.05)
        self.wfile.write(PNG[sent:])


class Messages:
    """Stands in for Messages.app: notes when each send arrived, writes its row into chat.db."""

    def __init__(self, writer: MessagesWriter) -> None:
        self.writer = writer
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        self.event = threading.Event()

    def __call__(self, target: Any, text: str, path: str | None = None) -> SendResult:
        with self.lock:
            self.arrived[text or "file"] = time.monotonic()
            (chat,) = self.writer.conn.execute(
                "SELECT ROWID FROM chat WHERE guid = ?", (target.chat_guid,)
            ).fetchone()
            files = [AttachmentSpec(path, "image/png", Path(path).name)] if path else []
            self.writer.message(
                text or "\ufffc",
                sender=None,
                chat=chat,
                is_from_me=1,
                text_in_column=True,
                attachments=files,
            )
        self.event.set()
        return SendResult(True)


def one_run(rounds: int, hold: float | None, step_waits: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-file-fetch-") as folder:
        root = Path(folder)
        (root / "Messages").mkdir()
        secret = secrets.token_hex(16)
        with MessagesWriter(root / "Messages" / "chat.db") as writer, StubBackend(secret) as stub:
            writer.direct_chat(ALICE)
            writer.direct_chat(BOB)
            settings = config.load(
                environ={
                    "RELAY_WEBHOOK_SECRET": secret,
                    "ARCHETY_BACKEND_URL": stub.url,
                    "ARCHETY_CHAT_DB": str(writer.path),
                    "ARCHETY_STATE_DIR": str(root / "state"),
                    "ARCHETY_LOG_FILE": str(root / "relay.log"),
                    "ARCHETY_METRICS_PORT": "0",
                    "ARCHETY_SEND_RATE_PER_CHAT": "100",
                    "HOME": str(root),
                },
                cwd=root,
            )
            messages = Messages(writer)
            daemon = Daemon(settings, open_store(settings.state_dir), send=messages)
            outbound = daemon.relay.outbound
            if step_waits:
                outbound.fetch_wait = FETCH_DEADLINE_SECONDS
            server = Trickle(hold or 0.0)
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            daemon.start()
            try:
                if hold is not None:
                    url = f"http://127.0.0.1:{server.server_address[1]}/picture.png"
                    picture = FileToSend(url, "picture.png", "image/png")
                    alice = SendNow("alice", f"iMessage;-;{ALICE}", "", files=(picture,))
                    outbound.execute(alice, time.time())
                    time.sleep(0.2)  # the fetch is under way before Bob's first send
                ms = []
                for i in range(rounds):
                    text = f"bob {i}"
                    stored = time.monotonic()
                    outbound.execute(SendNow(f"bob-{i}", f"iMessage;-;{BOB}", text), time.time())
                    while text not in messages.arrived:
                        messages.event.wait(0.5)
                        messages.event.clear()
                    ms.append((messages.arrived[text] - stored) * 1000)
                    time.sleep(0.02)
                file_done = "file" in messages.arrived
            finally:
                daemon.shutdown()
                daemon.relay.store.close()
                server.shutdown()
                server.server_close()
    return {
        "rounds": rounds,
        "p50_ms": round(statistics.median(ms), 1),
        "p90_ms": round(percentile(ms, 0.9), 1),
        "max_ms": round(max(ms), 1),
        "file_sent_meanwhile": file_done,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    logs.configure(log_file=None, console=None)  # the relay's log lines are not the figures
    rounds, hold = (5, 1.0) if args.smoke else (30, 5.0)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    figures = {
        "hold_s": hold,
        "no_file": one_run(rounds, None, False),
        "slow_file": one_run(rounds, hold, False),
        "slow_file_step_waits": one_run(rounds, hold, True),
    }
    print(json.dumps(figures, indent=2))
    if args.smoke:
        return 0
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "file_fetch.json").write_text(json.dumps(figures, indent=2) + "\n")
    rows = [
        ("no file being fetched", figures["no_file"]),
        (f"Alice's picture trickling for {hold:g} s", figures["slow_file"]),
        ("the same, the step waiting for the fetch (as before)", figures["slow_file_step_waits"]),
    ]
    block = "\n".join(
        [
            BEGIN,
            "## A slow file download and the other chats (issue #19; `bench/file_fetch.py`)",
            "",
            f"{started} UTC, Linux, in-process daemon threads. Bob's {rounds} sends one after "
            "another (command stored → send reaching Messages), while Alice's picture trickles "
            "in from a loopback server (a byte every 50 ms), and without it:",
            "",
            "| run | Bob p50 | p90 | max |",
            "|---|---|---|---|",
            *(
                f"| {name} | {r['p50_ms']:.1f} ms | {r['p90_ms']:.1f} ms | {r['max_ms']:.1f} ms |"
                for name, r in rows
            ),
            "",
            "A fetch runs on a thread of its own, so Bob's sends do not wait for Alice's file. "
            "With the step waiting for it, as every fetch did before, Bob's first send (stored "
            "0.2 s into the fetch) waited for the rest of the download: that is the max; a real "
            "trickle could hold it up to the 120 s fetch deadline.",
            END,
        ]
    )
    write_section(DOC, BEGIN, END, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
