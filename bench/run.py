"""Benchmarks: archety-relay against a polling baseline, in the same run, on this machine.

    .venv/bin/python bench/run.py            # full run (several minutes), writes bench/results/
    .venv/bin/python bench/run.py --smoke    # small sizes, to check the harness still works

Both relays run as subprocesses against a chat.db written the way Messages.app writes it and a
loopback backend that records the wall-clock arrival of every request. Latency is commit of the
row → request read by the backend, matched by message_guid. Medians and ratios to the baseline
are the figures to quote; single absolute times on a shared machine are not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fast_backend import FastBackend

from archety_relay.chatdb import typedstream
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend

HERE = Path(__file__).resolve().parent
SENDER = "+15555550101"


@dataclass(frozen=True)
class Sizes:
    messages: int
    spacing_s: float
    burst: int
    history: int
    idle_s: float
    startup_runs: int
    decode_blobs: int
    chat_counts: tuple[int, ...]  # chats writing at once, each answer taking answer_s
    answer_s: float
    drain_messages: int  # queued during an outage, over drain_chats chats
    drain_chats: int
    drain_rtt_s: float


FULL = Sizes(300, 0.03, 5000, 1_000_000, 60, 9, 20_000, (8, 16, 32), 2.0, 2000, 50, 0.08)
SMOKE = Sizes(30, 0.03, 300, 5_000, 2, 3, 2_000, (4,), 0.3, 60, 6, 0.02)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def proc_stat(pid: int) -> tuple[float, int, int]:
    """(cpu seconds, current RSS kB, peak RSS kB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kb = {
        ln.split(":")[0]: int(ln.split()[1]) for ln in status if ln.startswith(("VmRSS", "VmHWM"))
    }
    return cpu, kb["VmRSS"], kb["VmHWM"]


class Rig:
    """A chat.db, a loopback backend and one relay (ours or the baseline) between them."""

    def __init__(
        self,
        kind: str,
        history: int = 0,
        fast: bool = False,
        answer_s: float = 0.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        (self.dir / "Messages").mkdir()
        self.writer = MessagesWriter(self.dir / "Messages" / "chat.db")
        self.chat = self.writer.direct_chat(SENDER)
        if history:
            self.writer.fill_history(history, sender=SENDER, chat=self.chat)
        self.secret = secrets.token_hex(32)
        self.backend = StubBackend(self.secret, answer_delay=answer_s).start()
        self.fast = FastBackend() if fast else None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ARCHETY_", "RELAY_"))},
            "RELAY_WEBHOOK_SECRET": self.secret,
            "ARCHETY_BACKEND_URL": self.fast.url if self.fast else self.backend.url,
            "ARCHETY_CHAT_DB": str(self.writer.path),
            "ARCHETY_STATE_DIR": str(self.dir / "state"),
            "ARCHETY_LOG_FILE": str(self.dir / "relay.log"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> int:
        if self.kind == "relay":
            argv = [sys.executable, "-m", "archety_relay", "run"]
        else:
            argv = [sys.executable, str(HERE / "baseline_relay.py")]
        self.proc = subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.dir,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        if self.kind == "relay":
            log = self.dir / "relay.log"
            while time.monotonic() < deadline:
                if log.exists() and '"relay_ready"' in log.read_text():
                    break
                time.sleep(0.02)
        else:
            assert self.proc.stdout is not None
            self.proc.stdout.readline()
        time.sleep(0.3)
        return self.proc.pid

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.backend.stop()
        if self.fast:
            self.fast.stop()
        self.writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def rig(kind: str, history: int = 0, fast: bool = False, **options: Any) -> Iterator[Rig]:
    r = Rig(kind, history, fast, **options)
    try:
        yield r
    finally:
        r.close()


def latency(kind: str, sizes: Sizes, history: int = 0) -> dict[str, Any]:
    with rig(kind, history) as r:
        r.start()
        committed: dict[str, float] = {}
        for i in range(sizes.messages):
            guid = f"LAT-{i:05d}-{kind}"
            # text in the column too, so the baseline (which skips NULL text) sees every row
            r.writer.message(
                f"latency {i}", sender=SENDER, chat=r.chat, guid=guid, text_in_column=True
            )
            committed[guid] = time.time()
            time.sleep(sizes.spacing_s)
        got = r.backend.wait_for_messages(sizes.messages, timeout=60)
        ms = [
            (m.at - committed[m.body["message_guid"]]) * 1000
            for m in got
            if m.body and m.body.get("message_guid") in committed
        ]
    return {
        "received": len(ms),
        "p50_ms": percentile(ms, 0.5),
        "p90_ms": percentile(ms, 0.9),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
    }


def burst(kind: str, sizes: Sizes, fast: bool = False) -> dict[str, Any]:
    """5,000 rows in one transaction; with `fast`, against the asyncio backend (see there)."""
    with rig(kind, fast=fast) as r:
        pid = r.start()
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                with suppress(OSError, KeyError, ValueError):
                    peak[0] = max(peak[0], proc_stat(pid)[2])
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        texts = [f"burst {i}" for i in range(sizes.burst)]
        start = time.time()
        r.writer.burst(texts, sender=SENDER, chat=r.chat, text_in_column=True)
        if r.fast:
            r.fast.wait_for(sizes.burst, timeout=600)
            arrivals = [t for t, _ in r.fast.arrivals]
        else:
            arrivals = [m.at for m in r.backend.wait_for_messages(sizes.burst, timeout=600)]
        done.set()
        seconds = (max(arrivals) if arrivals else start) - start
    return {
        "received": len(arrivals),
        "seconds": seconds,
        "per_s": len(arrivals) / seconds if seconds > 0 else 0.0,
        "peak_rss_mb": peak[0] / 1024,
    }


def people(n: int) -> list[str]:
    return [f"+1555556{i:04d}" for i in range(n)]


def chats_at_once(chats: int, answer_s: float, in_flight: int) -> dict[str, Any]:
    """`chats` people write at the same moment and every answer takes `answer_s` (the model
    thinking): how long until the backend has received the last of their messages."""
    env = {"ARCHETY_MAX_IN_FLIGHT": str(in_flight)}
    with rig("relay", answer_s=answer_s, extra_env=env) as r:
        rooms = {p: r.writer.direct_chat(p) for p in people(chats)}
        r.start()
        committed: dict[str, float] = {}
        for i, (person, room) in enumerate(rooms.items()):
            guid = f"CHAT-{i:04d}-{in_flight}"
            r.writer.message(f"hi {i}", sender=person, chat=room, guid=guid)
            committed[guid] = time.time()
        got = r.backend.wait_for_messages(chats, timeout=chats * answer_s + 60)
        waits = [m.at - committed[m.body["message_guid"]] for m in got]
    return {
        "chats": chats,
        "in_flight": in_flight,
        "received": len(waits),
        "max_wait_s": max(waits),
        "median_wait_s": statistics.median(waits),
    }


def drain_after_outage(sizes: Sizes, in_flight: int) -> dict[str, Any]:
    """Messages pile up while the backend answers 503; then it answers again, each answer
    taking `drain_rtt_s`: how long until the queue is empty."""
    env = {"ARCHETY_MAX_IN_FLIGHT": str(in_flight), "ARCHETY_MAX_BACKOFF": "0.5"}
    with rig("relay", answer_s=sizes.drain_rtt_s, extra_env=env) as r:
        rooms = [(p, r.writer.direct_chat(p)) for p in people(sizes.drain_chats)]
        r.backend.set_default("/orchestrator/message", Behaviour(503))
        r.start()
        for i in range(sizes.drain_messages):
            person, room = rooms[i % len(rooms)]
            r.writer.message(f"queued {i}", sender=person, chat=room)
        state = r.dir / "state" / "outbox.db"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # everything captured and waiting
            with suppress(Exception), sqlite3.connect(state) as db:
                if db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] >= sizes.drain_messages:
                    break
            time.sleep(0.2)
        recovered = time.time()
        r.backend.set_default("/orchestrator/message", None)
        timeout = sizes.drain_messages * sizes.drain_rtt_s * 2 + 60
        got = r.backend.wait_for_messages(sizes.drain_messages, timeout=timeout)
        seconds = max(m.at for m in got) - recovered
    return {
        "in_flight": in_flight,
        "received": len(got),
        "seconds": seconds,
        "per_s": len(got) / seconds,
    }


def lanes(sizes: Sizes) -> dict[str, Any]:
    """Side by side (ARCHETY_MAX_IN_FLIGHT=16, the default) against one at a time (=1), in the
    same run: the only difference between the two is how many chats may wait at once."""
    return {
        "answer_s": sizes.answer_s,
        "chats": [
            {
                "side_by_side": chats_at_once(n, sizes.answer_s, 16),
                "one_at_a_time": chats_at_once(n, sizes.answer_s, 1),
            }
            for n in sizes.chat_counts
        ],
        "drain": {
            "messages": sizes.drain_messages,
            "chats": sizes.drain_chats,
            "rtt_s": sizes.drain_rtt_s,
            "side_by_side": drain_after_outage(sizes, 16),
            "one_at_a_time": drain_after_outage(sizes, 1),
        },
    }


def idle(kind: str, sizes: Sizes) -> dict[str, Any]:
    with rig(kind) as r:
        pid = r.start()
        time.sleep(1.0)
        cpu0, _, _ = proc_stat(pid)
        time.sleep(sizes.idle_s)
        cpu1, rss, _ = proc_stat(pid)
    return {"cpu_s_per_min": (cpu1 - cpu0) * 60 / sizes.idle_s, "rss_mb": rss / 1024}


def startup(sizes: Sizes) -> dict[str, Any]:
    with rig("relay") as r:
        argv = [sys.executable, "-m", "archety_relay", "--once"]
        subprocess.run(argv, env=r.env, cwd=r.dir, capture_output=True, check=True)
        walls = []
        for _ in range(sizes.startup_runs):
            t = time.perf_counter()
            subprocess.run(argv, env=r.env, cwd=r.dir, capture_output=True, check=True)
            walls.append(time.perf_counter() - t)
        bare = []
        for _ in range(sizes.startup_runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - t)
    return {"median_s": statistics.median(walls), "python_bare_median_s": statistics.median(bare)}


def decode(sizes: Sizes) -> dict[str, Any]:
    blobs = [typedstream.encode(f"message number {i} with some words 😀") for i in range(500)]
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        n = 0
        while n < sizes.decode_blobs:
            for blob in blobs:
                typedstream.decode(blob)
            n += len(blobs)
        rates.append(n / (time.perf_counter() - t))
    return {"median_per_s": statistics.median(rates)}


def machine() -> dict[str, Any]:
    model = ""
    with suppress(OSError, StopIteration):
        model = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    return {
        "system": f"{platform.system()} {platform.release()}",
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, finishes in ~1 min")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--only", default="latency,burst,scale,lanes,idle,startup,decode")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    only = set(args.only.split(","))
    results: dict[str, Any] = {
        "sizes": asdict(sizes),
        "machine": machine(),
        "smoke": args.smoke,
        "started": time.strftime("%Y-%m-%d %H:%M"),
    }

    def step(name: str, fn: Any, *a: Any) -> Any:
        print(f"… {name}", file=sys.stderr, flush=True)
        return fn(*a)

    if "latency" in only:
        results["latency"] = {
            k: step(f"latency {k}", latency, k, sizes) for k in ("relay", "baseline")
        }
    if "burst" in only:
        results["burst"] = {k: step(f"burst {k}", burst, k, sizes) for k in ("relay", "baseline")}
        results["burst_fast_backend"] = {
            k: step(f"burst {k} (fast backend)", burst, k, sizes, True)
            for k in ("relay", "baseline")
        }
    if "scale" in only:
        results["scale"] = {"relay": step("scale relay", latency, "relay", sizes, sizes.history)}
    if "lanes" in only:
        results["lanes"] = step("lanes", lanes, sizes)
    if "idle" in only:
        results["idle"] = {k: step(f"idle {k}", idle, k, sizes) for k in ("relay", "baseline")}
    if "startup" in only:
        results["startup"] = step("startup", startup, sizes)
    if "decode" in only:
        results["decode"] = step("decode", decode, sizes)

    args.out.mkdir(parents=True, exist_ok=True)
    name = "smoke.json" if args.smoke else "latest.json"
    path = args.out / name
    if args.only != parser.get_default("only") and path.exists():
        # A partial run replaces only what it measured.
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
