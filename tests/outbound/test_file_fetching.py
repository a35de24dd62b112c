"""A file the persona sends is fetched off the dispatcher's step (issue #19): a slow file server
holds only the chat the file is for, and a relay stopped mid-fetch fetches it again.

Real parts: the daemon in a subprocess, the stand-in backend answering Alice with a picture and
Bob with text, a file server on loopback that holds Alice's picture half sent, and the fake
osascript writing what Messages would into the test's chat.db. Nothing is timed: the file
server holds the picture until the test's condition is met (or gives up, which the tests see).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ALICE,
    BOB,
    FakeOsascript,
    RelayProcess,
    log_events,
    osascript_arguments,
    run_cli,
    serving,
    wait_until,
)

from archety_relay.backend import commands
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.relay import Relay

PNG = b"\x89PNG\r\n\x1a\n" + hashlib.sha256(b"held").digest() * 400
MSG = "/orchestrator/message"
ALICE_CHAT, BOB_CHAT = f"iMessage;-;{ALICE}", f"iMessage;-;{BOB}"
# How long the file server holds a picture if its condition never comes (the old dispatcher
# waited for the whole fetch, so Bob's text could never go first: the test must not hang).
HOLD_AT_MOST_SECONDS = 15.0


class HeldFile(ThreadingHTTPServer):
    """Serves PNG at /picture.png: the headers and the first KB at once, the rest only when
    `release()` says so (or after HOLD_AT_MOST_SECONDS). Records why each answer was let go."""

    daemon_threads = True

    def __init__(self) -> None:
        self.release: Callable[[], bool] = lambda: False
        self.gets = 0
        self.let_go: list[str] = []  # "released" or "gave_up", one per answer finished
        self.holding = threading.Event()
        super().__init__(("127.0.0.1", 0), _HeldHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/picture.png"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a relay killed mid-fetch hangs up: that is the point


class _HeldHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HeldFile

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.gets += 1
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG[:1024])
        self.wfile.flush()
        self.server.holding.set()
        released = wait_until(lambda: self.server.release(), HOLD_AT_MOST_SECONDS, step=0.05)
        self.server.let_go.append("released" if released else "gave_up")
        self.wfile.write(PNG[1024:])


@pytest.fixture
def held() -> Iterator[HeldFile]:
    yield from serving(HeldFile())


@pytest.fixture
def answers(backend: StubBackend, held: HeldFile) -> None:
    """The orchestrator answers Alice with the held picture, Bob with a line of text."""

    def answer(body: Any) -> Behaviour:
        if body["sender"] == ALICE:
            return Behaviour(body={"should_respond": True, "attachments": [{"url": held.url}]})
        return Behaviour(body={"should_respond": True, "reply_text": "hi bob"})

    backend.respond_with(MSG, answer)


def _sends(osascript: FakeOsascript) -> list[tuple[str, str]]:
    """(chat guid, what went): the text, or the staged file's name."""
    return [
        (a[0], Path(a[5]).name if len(a) > 5 else a[1])
        for a in map(osascript_arguments, osascript.calls())
    ]


def _partials(writer: MessagesWriter) -> list[Path]:
    return list((writer.path.parent / "Attachments" / "archety").rglob("*"))


def _relay_env(osascript: FakeOsascript, writer: MessagesWriter) -> dict[str, str]:
    return {**osascript.env, "FAKE_OSASCRIPT_CHATDB": str(writer.path)}


def test_a_slow_download_holds_only_its_own_chat(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    osascript: FakeOsascript,
    held: HeldFile,
    answers: None,
) -> None:
    """Alice's picture trickles in and stops half way; Bob writes meanwhile. Bob's reply
    reaches the send script while Alice's picture is still held (the file server lets it go
    only once it sees Bob's send), and Alice's picture follows, sent once."""
    alice, bob = writer.direct_chat(ALICE), writer.direct_chat(BOB)
    held.release = lambda: (BOB_CHAT, "hi bob") in _sends(osascript)
    start_relay(_relay_env(osascript, writer))
    writer.message("show me the menu", sender=ALICE, chat=alice)
    assert held.holding.wait(20)
    writer.message("hey", sender=BOB, chat=bob)
    assert wait_until(lambda: any(c == ALICE_CHAT for c, _ in _sends(osascript)), 40)
    assert held.let_go == ["released"]  # not "gave_up": Bob's reply went while Alice's was held
    assert _sends(osascript) == [(BOB_CHAT, "hi bob"), (ALICE_CHAT, "picture.png")]
    assert held.gets == 1


@pytest.mark.parametrize("stop", ["sigterm", "kill_9"])
def test_a_relay_stopped_mid_fetch_fetches_again_and_sends_once(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    osascript: FakeOsascript,
    held: HeldFile,
    answers: None,
    env: dict[str, str],
    tmp_path: Path,
    stop: str,
) -> None:
    """While Alice's picture is held half sent, `status` counts it as a file waiting. SIGTERM
    then stops the relay cleanly at once (the fetch does not hold shutdown); kill -9 stops it
    dead. Either way nothing half fetched is ever given the file's name or sent; the next
    relay fetches the picture again from the start and sends it once."""
    alice = writer.direct_chat(ALICE)
    relay_env = _relay_env(osascript, writer)
    first = start_relay(relay_env)
    writer.message("show me the menu", sender=ALICE, chat=alice)
    assert held.holding.wait(20)
    shown = run_cli(["status"], env, cwd=tmp_path)
    assert "files waiting : 1" in shown.stdout, shown.stdout + shown.stderr
    if stop == "sigterm":
        rc, _took = first.terminate(timeout=10)
        assert rc == 0
        assert [e["clean"] for e in log_events(first.log, "relay_stopped")] == [True]
    else:
        first.kill9()
    assert [p.name for p in _partials(writer) if p.is_file()] in ([], [".download"])
    assert osascript.calls() == []

    held.release = lambda: True
    start_relay(relay_env)
    assert wait_until(lambda: bool(osascript.calls()), 30)
    assert _sends(osascript) == [(ALICE_CHAT, "picture.png")]
    assert held.gets == 2  # fetched again from the start, not resumed from a partial file
    assert wait_until(lambda: not [p for p in _partials(writer) if p.is_file()], 10)


def test_once_waits_for_the_file_it_sends(
    env: dict[str, str],
    tmp_path: Path,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
) -> None:
    """`--once` has no later step to pick up a fetch that is back: a picture answer due now is
    fetched, sent and confirmed before it exits."""
    chat = writer.direct_chat(ALICE)
    run_cli(["--once"], env, cwd=tmp_path)
    writer.message("show me", sender=ALICE, chat=chat)
    url = backend.serve_file("menu.png", PNG, "image/png")
    backend.script(MSG, Behaviour(body={"should_respond": True, "attachments": [{"url": url}]}))
    result = run_cli(["--once"], {**env, **_relay_env(osascript, writer)}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _sends(osascript) == [(ALICE_CHAT, "menu.png")]
    assert "outgoing     : 1 sent" in result.stdout


def test_a_file_cancelled_while_it_is_fetched_is_not_sent(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, held: HeldFile
) -> None:
    """A send cancelled while its picture is still being fetched stays cancelled once the
    fetch is back: nothing is sent, no message_failed is reported, its staging folder goes.
    (Before, a fetch that came back marked its row sending, whatever had happened to it.)"""
    writer.direct_chat(ALICE)
    back = threading.Event()
    relay.outbound.notify = back.set
    relay.outbound.execute(
        commands.to_action(
            {
                "command_id": "c-send",
                "command_type": "send_message",
                "params": {"chat_guid": ALICE_CHAT, "attachments": [{"url": held.url}]},
            }
        ),
        100.0,
    )
    relay.outbound.dispatch_step(100.0)
    assert held.holding.wait(10)
    (row,) = relay.store.heads_due(200.0)
    relay.outbound.execute(commands.Cancel("c-cancel", row.id, "cancel_message"), 101.0)
    back.clear()
    held.release = lambda: True
    assert back.wait(20)  # the fetch is back: it wakes the dispatcher
    relay.outbound.dispatch_step(102.0)
    assert osascript.calls() == []
    assert relay.store.outgoing_counts() == {"cancelled": 1}
    assert not [e for e in relay.store.pending_events() if e.event_type == "message_failed"]
    assert _partials(writer) == []
