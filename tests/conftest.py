"""Real parts for every test: a chat.db from Apple's schema, a loopback backend, the real CLI."""

from __future__ import annotations

import dataclasses
import getopt
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import pytest

from archety_relay import config
from archety_relay.chatdb.reader import ChatDb
from archety_relay.config import Settings
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.pictures.upload import Photos
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
        # Off unless a test turns it on with a port of its own: relays under test run side by
        # side (and beside other checkouts' tests on one machine) and must not share a port.
        "ARCHETY_METRICS_PORT": "0",
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


def relay_life(settings: Settings, work: Callable[[Relay], object]) -> None:
    """One life of a relay, in-process: open the state, run `work`, close everything (a restart
    is two calls)."""
    store = open_store(settings.state_dir)
    relay = Relay(settings, ChatDb(settings.chat_db), store)
    try:
        work(relay)
    finally:
        relay.backend.close()
        relay.chatdb.close()
        store.close()


def no_picture_wait(relay: Relay) -> None:
    """For tests whose attachments are paths with no file behind them: the relay does not wait
    ARCHETY_ATTACHMENT_WAIT for them to download; they go at once as `pending`."""
    no_wait = dataclasses.replace(relay.settings, attachment_wait=0.0)
    relay.photos = relay.delivery.photos = Photos(no_wait, relay.chatdb, relay.store, relay.backend)


# The top-level fields of every `/edge/sync` request (the backend's protocol, both dialects).
SYNC_REQUEST_FIELDS = {
    "edge_agent_id",
    "version",
    "capabilities",
    "events",
    "status",
    "last_sync",
    "last_command_id",
    "stats",
}


@pytest.fixture
def make_relay(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Relay]]:
    """Relays built in-process from `env` plus overrides, each re-reading its secret from the
    same settings (as SIGHUP does), optionally with a stand-in `send` for Messages.app; a second
    call on the same state is a restart. All closed at the end."""
    made: list[Relay] = []

    def make(*, send: Callable[..., Any] | None = None, **overrides: str) -> Relay:
        settings = config.load(environ={**env, **overrides}, cwd=tmp_path)
        relay = Relay(
            settings,
            ChatDb(settings.chat_db),
            open_store(settings.state_dir),
            reload_secret=lambda: config.load(environ={**env, **overrides}).secret,
            **({"send": send} if send is not None else {}),
        )
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.backend.close()
        relay.chatdb.close()
        relay.store.close()


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


def serving(server: HTTPServer) -> Iterator[Any]:
    """Serve `server` on a thread of its own until the generator ends (a fixture's body)."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def cli_env(env: dict[str, str]) -> dict[str, str]:
    merged = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHETY_", "RELAY_"))}
    merged.update(env)
    return merged


def killable_relay(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`archety-relay run` in a session of its own, so a test can kill -9 it together with the
    osascript it is waiting on (os.killpg)."""
    return subprocess.Popen(
        [sys.executable, "-m", "archety_relay", "run"],
        env=cli_env(env),
        cwd=cwd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


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


def write_env_file(path: Path, secret: str) -> Path:
    """A private .env holding only the webhook secret (rewritten to rotate it)."""
    path.write_text(f"RELAY_WEBHOOK_SECRET={secret}\n")
    path.chmod(0o600)
    return path


def accepted_texts(backend: StubBackend) -> list[str]:
    return [r.body["text"] for r in backend.messages()]


FAKE_OSASCRIPT = """#!{python}
\"\"\"Stands in for macOS's osascript and Messages.app: records argv, then does what the send
script and Messages would do with its arguments.

Options are read as osascript reads them (POSIX getopt: until `--` or the first non-option), so
an argument that would be taken for an option is caught here as it would be on the Mac.
The send script's arguments are: chat guid, text, handle, service, the guid's other spelling,
and (a file) its path: the row then has text U+FFFC and one attachment, a copy Messages keeps
in its own Attachments folder (or, with FAKE_OSASCRIPT_FILE_MODE=reference, the staged path).
Like the script it tries `chat id` with the guid, then the other spelling, then (direct chats)
the participant; Messages records what it sent as an is_from_me = 1 row joined to the chat.
  FAKE_OSASCRIPT_CHATDB             the chat.db Messages writes to (unset: record argv only)
  FAKE_OSASCRIPT_MODE=silent        exit 0 and write nothing (what macOS 26 does to some groups)
  FAKE_OSASCRIPT_UNKNOWN_CHAT_IDS   guids `chat id` cannot find (-1728), comma-separated
A group addressed as `…;-;chat…` exits 0 and writes an empty row in no chat (steipete/imsg#90).
  FAKE_OSASCRIPT_FAIL               fail every call with this message
  FAKE_OSASCRIPT_PROBE_FILE         a file holding how the Automation probe answers:
                                    ok (default) | denied (-1743) | hang (a prompt nobody answers)
\"\"\"
import getopt, json, os, sqlite3, sys, time, uuid
log = os.environ["FAKE_OSASCRIPT_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
options, arguments = getopt.getopt(sys.argv[1:], "e:l:s:i")
if any(flag != "-e" for flag, _ in options):
    sys.stderr.write("osascript: unexpected option\\n")
    sys.exit(2)
fail = os.environ.get("FAKE_OSASCRIPT_FAIL")
if fail:
    sys.stderr.write(fail + "\\n")
    sys.exit(1)
script = [value for flag, value in options]
if any("count of argv" in line for line in script):  # doctor --live's argv self-test
    print("|".join([str(len(arguments)), *arguments[:2]]))
    sys.exit(0)
if not arguments:  # the Automation probe: count of accounts
    probe = os.environ.get("FAKE_OSASCRIPT_PROBE_FILE")
    mode = open(probe).read().strip() if probe and os.path.exists(probe) else "ok"
    if mode == "denied":
        sys.stderr.write("execution error: Not authorized to send Apple events to Messages. "
                         "(-1743)\\n")
        sys.exit(1)
    if mode == "hang":  # a prompt nobody answers: osascript waits
        time.sleep(60)
    print(1)
    sys.exit(0)
time.sleep(float(os.environ.get("FAKE_OSASCRIPT_SLEEP_BEFORE", "0")))
chat_guid, text, handle, service, alt, file_path = (arguments + [""] * 6)[:6]
if file_path and not os.path.isfile(file_path):
    sys.stderr.write("execution error: file_unreadable: Can't make file into type alias. (-1700)\\n")
    sys.exit(1)
db = os.environ.get("FAKE_OSASCRIPT_CHATDB")
unknown = set(os.environ.get("FAKE_OSASCRIPT_UNKNOWN_CHAT_IDS", "").split(","))
if db and os.environ.get("FAKE_OSASCRIPT_MODE") != "silent":
    conn = sqlite3.connect(db, timeout=10)
    conn.create_function("verify_chat", 1, lambda guid: None)
    chat, via = None, None
    for guid, form in ((chat_guid, "chat_id"), (alt, "alt_chat_id")):
        if ";-;chat" in guid:  # macOS 26: "succeeds" and writes an empty row in no chat
            conn.execute("INSERT INTO message (guid, text, handle_id, service, date, is_from_me) "
                         "VALUES (?, '', 0, 'SMS', 0, 1)", (str(uuid.uuid4()).upper(),))
            conn.commit()
            print("chat_id")
            sys.exit(0)
        if guid and guid not in unknown:
            chat = conn.execute("SELECT ROWID FROM chat WHERE guid = ?", (guid,)).fetchone()
            if chat:
                via = form
                break
    if chat is None:
        if not handle:
            sys.stderr.write("execution error: group_send_unsupported: no chat with this id "
                             "(-1728)\\n")
            sys.exit(1)
        chat = conn.execute("SELECT ROWID FROM chat WHERE chat_identifier = ? AND style = 45",
                            (handle,)).fetchone()
        if chat is None:  # Messages starts a conversation with the participant
            chat = (conn.execute("INSERT INTO chat (guid, style, state, chat_identifier, "
                                 "service_name) VALUES (?, 45, 3, ?, ?)",
                                 (f"{service};-;{handle}", handle, service)).lastrowid,)
        via = "participant"
    date = int((time.time() - 978307200) * 1e9)
    cur = conn.execute("INSERT INTO message (guid, text, handle_id, service, date, is_from_me, "
                       "is_sent, is_finished) VALUES (?, ?, 0, ?, ?, 1, 1, 1)",
                       (str(uuid.uuid4()).upper(), "\\ufffc" if file_path else text,
                        service or "iMessage", date))
    if file_path:
        import shutil
        guid = str(uuid.uuid4()).upper()
        kept = file_path
        if os.environ.get("FAKE_OSASCRIPT_FILE_MODE") != "reference":
            store = os.path.join(os.path.dirname(db), "Attachments", guid[:2].lower(), guid)
            os.makedirs(store)
            kept = shutil.copy(file_path, store)
        att = conn.execute("INSERT INTO attachment (guid, original_guid, filename, "
                           "transfer_name, total_bytes, is_outgoing, transfer_state) "
                           "VALUES (?, ?, ?, ?, ?, 1, 5)",
                           (guid, guid, kept, os.path.basename(file_path),
                            os.path.getsize(file_path))).lastrowid
        conn.execute("INSERT INTO message_attachment_join (message_id, attachment_id) "
                     "VALUES (?, ?)", (cur.lastrowid, att))
    conn.execute("INSERT INTO chat_message_join (chat_id, message_id, message_date) "
                 "VALUES (?, ?, ?)", (chat[0], cur.lastrowid, date))
    conn.commit()
    conn.close()
    print(via)
time.sleep(float(os.environ.get("FAKE_OSASCRIPT_SLEEP_AFTER", "0")))
"""


class FakeOsascript:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "osascript"
        self.path.write_text(FAKE_OSASCRIPT.replace("{python}", sys.executable))
        self.path.chmod(0o755)
        self.log = directory / "calls.jsonl"
        self.env = {
            "PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_OSASCRIPT_LOG": str(self.log),
        }

    def all_calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def calls(self) -> list[list[str]]:
        """The sends: calls with arguments for the run handler."""
        return [c for c in self.all_calls() if osascript_arguments(c)]

    def probes(self) -> list[list[str]]:
        """The Automation probes the daemon makes (a script and no arguments)."""
        return [c for c in self.all_calls() if not osascript_arguments(c)]

    def sent(self) -> list[tuple[str, str]]:
        """(chat guid, text) of every call: the run handler's first two arguments."""
        return [(args[0], args[1]) for args in map(osascript_arguments, self.calls())]


def osascript_arguments(argv: list[str]) -> list[str]:
    """What osascript passes to the run handler: what is left once getopt has read options."""
    return getopt.getopt(argv, "e:l:s:i")[1]


@pytest.fixture
def osascript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: MessagesWriter
) -> FakeOsascript:
    """A fake osascript first on PATH, sending into the test's chat.db as Messages would."""
    fake = FakeOsascript(tmp_path / "fakebin")
    monkeypatch.setenv("FAKE_OSASCRIPT_CHATDB", str(writer.path))
    for key, value in fake.env.items():
        monkeypatch.setenv(key, value)
    return fake


@pytest.fixture
def attachments(writer: MessagesWriter) -> Path:
    """Messages' Attachments folder beside the test's chat.db: with StickerCache, the only
    place the relay reads pictures from."""
    folder = writer.path.parent / "Attachments"
    folder.mkdir(exist_ok=True)
    return folder


def posted(relay: Relay, backend: StubBackend) -> dict[str, dict[str, Any]]:
    """Capture every new row and deliver what may go now; the bodies the backend got so far,
    by message guid."""
    relay.capture_step(time.time())
    while relay.deliver_step(time.monotonic()).kind == "delivered":
        pass
    return {m.body["message_guid"]: m.body for m in backend.messages()}
