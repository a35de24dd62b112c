"""Real parts for every test: a chat.db from Apple's schema, a loopback backend, the real CLI."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archety_relay import config
from archety_relay.chatdb import ChatDb
from archety_relay.config import Settings
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay
from archety_relay.store import Store, open_store

ALICE = "+15555550101"
BOB = "+15555550102"
TESTS = Path(__file__).parent
SHARED_FIXTURES = TESTS.parent.parent / "shared" / "fixtures"


@pytest.fixture
def secret() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[MessagesWriter]:
    (tmp_path / "Messages").mkdir()
    with MessagesWriter(tmp_path / "Messages" / "chat.db") as w:
        yield w


@pytest.fixture
def backend(secret: str) -> Iterator[StubBackend]:
    with StubBackend(secret) as stub:
        yield stub


@pytest.fixture
def env(
    tmp_path: Path, secret: str, backend: StubBackend, writer: MessagesWriter
) -> dict[str, str]:
    """The variables a relay under test runs with: everything in tmp_path, nothing from $HOME."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "RELAY_WEBHOOK_SECRET": secret,
        "ARCHETY_BACKEND_URL": backend.url,
        "ARCHETY_CHAT_DB": str(writer.path),
        "ARCHETY_STATE_DIR": str(tmp_path / "state"),
        "ARCHETY_LOG_FILE": str(tmp_path / "logs" / "relay.log"),
        "EDGE_AGENT_ID": "test-agent",
        "ARCHETY_POLL_INTERVAL": "0.5",
        "ARCHETY_MAX_BACKOFF": "0.5",
        "ARCHETY_AUTH_PROBE_INTERVAL": "1",
        "ARCHETY_CHAT_JOIN_WAIT": "1",
        "HOME": str(home),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
    }


@pytest.fixture
def settings(env: dict[str, str], tmp_path: Path) -> Settings:
    return config.load(environ=env, cwd=tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = open_store(settings.state_dir)
    yield s
    s.close()


@pytest.fixture
def relay(settings: Settings, store: Store) -> Iterator[Relay]:
    chatdb = ChatDb(settings.chat_db)
    r = Relay(settings, chatdb, store)
    yield r
    r.backend.close()
    chatdb.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in read_log(path) if e.get("event") == event]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def cli_env(env: dict[str, str]) -> dict[str, str]:
    merged = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHETY_", "RELAY_"))}
    merged.update(env)
    return merged


def run_cli(
    args: list[str],
    env: dict[str, str],
    *,
    cwd: Path,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archety_relay", *args],
        env=cli_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


class RelayProcess:
    """The daemon in a subprocess, as launchd runs it."""

    def __init__(self, env: dict[str, str], cwd: Path, args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.log = Path(env["ARCHETY_LOG_FILE"])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archety_relay", "run", *args],
            env=cli_env(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, count: int = 1, timeout: float = 20.0) -> None:
        ok = wait_until(
            lambda: (
                len(log_events(self.log, "relay_ready")) >= count or self.proc.poll() is not None
            ),
            timeout,
        )
        if not ok or self.proc.poll() is not None:
            _out, err = self.stop()
            raise AssertionError(f"relay never became ready: rc={self.proc.returncode} {err}")

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc, time.monotonic() - started

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate(timeout=10)
        return out, err


@pytest.fixture
def start_relay(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    procs: list[RelayProcess] = []

    def start(
        extra: dict[str, str] | None = None, ready: bool = True, args: tuple[str, ...] = ()
    ) -> RelayProcess:
        p = RelayProcess({**env, **(extra or {})}, tmp_path, args)
        procs.append(p)
        if ready:
            p.wait_ready(count=sum(1 for q in procs if q.log == p.log))
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record a fault case's figures for docs/reliability.md (when ARCHETY_RELIABILITY_OUT is set)."""
    out = os.environ.get("ARCHETY_RELIABILITY_OUT")

    def record(**fields: Any) -> None:
        if out:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps({"case": request.node.name, **fields}) + "\n")

    return record


def accepted_texts(backend: StubBackend) -> list[str]:
    return [r.body["text"] for r in backend.messages()]
