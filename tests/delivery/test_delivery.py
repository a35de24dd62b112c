"""Delivery against a real loopback backend that misbehaves on purpose: each status class.

The relay's steps are driven with chosen monotonic times, so waits are asserted exactly without
sleeping through them.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ALICE, write_env_file

from archety_relay.backend import client as backend_module
from archety_relay.backend.client import MAX_BODY_BYTES
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.relay import Relay

MSG = "/orchestrator/message"


def queue(relay: Relay, writer: MessagesWriter, *texts: str) -> None:
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    for text in texts:
        writer.message(text, sender=ALICE, chat=chat)
    relay.capture_step(time.time())


def test_request_headers_and_body_follow_the_contract(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, secret: str
) -> None:
    """Bearer secret, JSON, agent id in User-Agent and X-Edge-Agent-Id, Idempotency-Key = guid."""
    relay = make_relay()
    queue(relay, writer, "hi")
    assert relay.deliver_step(time.monotonic()).kind == "delivered"
    (got,) = backend.messages()
    assert got.headers["Authorization"] == f"Bearer {secret}"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "Archety-Edge-Client/test-agent"
    assert got.headers["X-Edge-Agent-Id"] == "test-agent"
    assert got.headers["Idempotency-Key"] == got.body["message_guid"]
    assert set(got.body) == {
        "chat_guid",
        "mode",
        "sender",
        "text",
        "kind",
        "timestamp",
        "participants",
        "message_guid",
        "chat_identifier",
        "service",
        "metadata",
    }


def test_5xx_is_retried_with_the_same_bytes_and_backoff(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A 503 keeps the message; the retry sends byte-identical body and key, after a backoff."""
    relay = make_relay(ARCHETY_MAX_BACKOFF="60")
    queue(relay, writer, "retry me")
    backend.script(MSG, Behaviour(503), Behaviour(502))
    now = 1000.0
    first = relay.deliver_step(now)
    assert first.kind == "retry" and first.wait is not None and 0.25 <= first.wait <= 0.5
    assert relay.deliver_step(now + first.wait / 2).kind == "waiting"  # no request while waiting
    # Waits count from the answer, a few ms after `now`.
    second = relay.deliver_step(now + first.wait + 0.05)
    assert second.kind == "retry" and second.wait is not None and second.wait >= 0.5
    assert relay.deliver_step(now + first.wait + second.wait + 0.1).kind == "delivered"
    attempts = backend.requests_to(MSG)
    assert [a.status for a in attempts] == [503, 502, 200]
    assert len({a.raw for a in attempts}) == 1
    assert len({a.headers["Idempotency-Key"] for a in attempts}) == 1


def test_429_retry_after_is_honoured(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """With Retry-After: 7 the next attempt waits at least 7 s, even above the backoff cap."""
    relay = make_relay()
    queue(relay, writer, "slow down")
    backend.script(MSG, Behaviour(429, headers={"Retry-After": "7"}))
    delivery = relay.deliver_step(500.0)
    assert delivery.kind == "retry" and delivery.wait == pytest.approx(7.0)
    assert relay.deliver_step(506.9).kind == "waiting"
    assert len(backend.requests_to(MSG)) == 1
    assert relay.deliver_step(507.1).kind == "delivered"


def test_401_pauses_keeps_the_queue_and_resumes_with_a_fixed_secret(
    make_relay: Callable[..., Relay],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
    secret: str,
) -> None:
    """Rejected: nothing is dropped, one probe per interval, and a corrected .env is picked up."""
    env_file = write_env_file(tmp_path / "relay.env", f"wrong-{secret[:8]}")
    env.pop("RELAY_WEBHOOK_SECRET")
    relay = make_relay(ARCHETY_ENV_FILE=str(env_file), ARCHETY_AUTH_PROBE_INTERVAL="60")
    queue(relay, writer, "one", "two")
    now = 100.0
    assert relay.deliver_step(now).kind == "auth_paused"
    assert relay.deliver_step(now + 30).kind == "waiting"
    assert relay.deliver_step(now + 59.9).kind == "waiting"
    assert len(backend.requests_to(MSG)) == 1
    assert relay.deliver_step(now + 60.1).kind == "auth_paused"  # probe, still wrong
    write_env_file(env_file, secret)
    assert relay.deliver_step(now + 121).kind == "delivered"
    assert relay.deliver_step(now + 121).kind == "delivered"
    assert [r.status for r in backend.requests_to(MSG)] == [401, 401, 200, 200]
    assert [r.body["text"] for r in backend.messages()] == ["one", "two"]


def test_rejected_message_is_dead_lettered_and_the_queue_goes_on(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A 422 for one poisoned message moves it aside with the response; the next is delivered."""
    relay = make_relay()
    queue(relay, writer, "poison", "fine")
    backend.script(MSG, Behaviour(422, body={"detail": "text too long"}))
    assert relay.deliver_step(1.0).kind == "dead_lettered"
    assert relay.deliver_step(1.0).kind == "delivered"
    (dead,) = relay.store.dead_letters()
    assert dead.status == 422 and json.loads(dead.response or "{}") == {"detail": "text too long"}
    assert [r.body["text"] for r in backend.messages()] == ["fine"]
    assert relay.store.retry_dead(time.time()) == 1
    assert relay.deliver_step(2.0).kind == "delivered"
    assert [r.body["text"] for r in backend.messages()] == ["fine", "poison"]


def test_redirect_is_not_followed_and_not_counted_as_delivered(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A 307 would turn into a GET that looks like success; it is a failure to retry."""
    relay = make_relay()
    queue(relay, writer, "stay put")
    backend.script(MSG, Behaviour(307, headers={"Location": backend.url + "/elsewhere"}))
    assert relay.deliver_step(1.0).kind == "retry"
    assert relay.store.stats().depth == 1
    assert [r.path for r in backend.received if r.path != "/orchestrator/heartbeat"] == [MSG]


def test_netrc_and_proxy_variables_cannot_hijack_the_request(
    make_relay: Callable[..., Relay],
    writer: MessagesWriter,
    backend: StubBackend,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """trust_env is off: a ~/.netrc for the host and an HTTP proxy variable change nothing."""
    home = tmp_path / "netrc-home"
    home.mkdir()
    (home / ".netrc").write_text("machine 127.0.0.1 login intruder password stolen\n")
    (home / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    relay = make_relay()
    queue(relay, writer, "direct")
    assert relay.deliver_step(1.0).kind == "delivered"
    assert backend.messages()[0].headers["Authorization"] == f"Bearer {secret}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_network_failures_are_outcomes_not_exceptions(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Closed port, a hung backend (read timeout) and a reset mid-response each mean retry."""
    down = make_relay(ARCHETY_BACKEND_URL=f"http://127.0.0.1:{_closed_port()}")
    queue(down, writer, "while down")
    delivery = down.deliver_step(1.0)
    assert (delivery.kind, delivery.outcome and delivery.outcome.error) == ("retry", "connect")
    down.store.close()

    relay = make_relay(ARCHETY_READ_TIMEOUT="0.3")
    backend.script(MSG, Behaviour(hang=True), Behaviour(reset=True))
    timed_out = relay.deliver_step(1.0)
    assert timed_out.outcome is not None and timed_out.outcome.error == "timeout"
    reset = relay.deliver_step(100.0)
    assert reset.kind == "retry" and reset.outcome is not None
    assert reset.outcome.error in ("reset", "connect", "other")
    assert relay.deliver_step(200.0).kind == "delivered"
    assert [r.body["text"] for r in backend.messages()] == ["while down"]


def test_clock_jumps_do_not_cause_a_storm_or_a_stall(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Waking from sleep (time leaps ahead) sends one request, not the missed retries; a row
    waiting for its chat join while the wall clock steps back still goes out after the wait."""
    relay = make_relay(ARCHETY_MAX_BACKOFF="60")
    queue(relay, writer, "after sleep")
    backend.set_default(MSG, Behaviour(503))
    for step in range(5):
        relay.deliver_step(float(step * 100))
    attempts = len(backend.requests_to(MSG))
    assert relay.deliver_step(10_000.0).kind == "retry"
    assert relay.deliver_step(10_000.0).kind == "waiting"
    assert len(backend.requests_to(MSG)) == attempts + 1
    backend.set_default(MSG, None)

    t0 = time.time()
    writer.message("orphan across a clock step", sender=ALICE, chat=None)
    assert relay.capture_step(t0).holding
    assert relay.capture_step(t0 - 3600).holding  # wall clock stepped back an hour
    relay.capture_step(t0 - 3600 + relay.settings.chat_join_wait + 0.1)
    while relay.deliver_step(20_000.0).kind == "delivered":
        pass
    assert [r.body["text"] for r in backend.messages()] == [
        "after sleep",
        "orphan across a clock step",
    ]


def test_state_database_full_keeps_the_cursor(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """SQLITE_FULL on the outbox: StateError, the cursor does not move, nothing is lost."""
    from archety_relay.errors import StateError

    relay = make_relay()
    queue(relay, writer)
    before = relay.store.cursor()
    # A page limit is SQLite's own "disk is full" (SQLITE_FULL), reachable without root.
    conn = relay.store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    chat = writer.direct_chat(ALICE)
    for i in range(50):
        writer.message("y" * 3000 + str(i), sender=ALICE, chat=chat)
    with pytest.raises(StateError):
        relay.capture_step(time.time())
    assert relay.store.cursor() == before
    conn.execute("PRAGMA max_page_count = 1073741823")
    relay.capture_step(time.time())
    while relay.deliver_step(1.0).kind == "delivered":
        pass
    assert len(backend.messages()) == 50


def test_tls_certificates_are_verified(
    make_relay: Callable[..., Relay], writer: MessagesWriter, secret: str, tmp_path: Path
) -> None:
    """An https backend with a certificate nobody vouches for is refused: nothing, secret
    included, is sent to it, and the message stays queued."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with StubBackend(secret, tls=context) as impostor:
        relay = make_relay(ARCHETY_BACKEND_URL=impostor.url)
        queue(relay, writer, "for the real backend only")
        delivery = relay.deliver_step(1.0)
        assert delivery.kind == "retry"
        assert delivery.outcome is not None and delivery.outcome.error == "tls"
        assert impostor.received == []
        assert relay.store.stats().depth == 1


def test_a_gzip_bomb_is_never_unpacked(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A 2xx whose `Content-Encoding: gzip` body (sent though the relay asked for identity)
    is 200 KB on the wire and 200 MiB unpacked: the message counts as delivered (posting
    again would bring the same answer), the body kept is at most MAX_BODY_BYTES, and no
    more than a few MiB are ever held in memory: the answer is not unpacked."""
    relay = make_relay()
    queue(relay, writer, "hello")
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), 9)
    backend.script(MSG, Behaviour(200, body=bomb, headers={"Content-Encoding": "gzip"}))
    tracemalloc.start()
    try:
        delivery = relay.deliver_step(1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert delivery.kind == "delivered" and delivery.outcome is not None
    assert len(delivery.outcome.body.encode()) <= 3 * MAX_BODY_BYTES  # replacement chars
    assert peak < 8 * MAX_BODY_BYTES


def test_a_compressed_answer_that_trickles_nothing_is_still_cut_at_the_body_deadline(
    make_relay: Callable[..., Relay],
    writer: MessagesWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 200 with `Content-Encoding: gzip` whose body is empty deflate blocks sent one every
    0.2 s for 4 s: each block unpacks to nothing, so a reader that waits for unpacked bytes
    never gets to look at the clock. With the body deadline at 1 s the answer is cut as
    "body_deadline" (a delivery), not read to its end however long the sender keeps going."""
    monkeypatch.setattr(backend_module, "BODY_DEADLINE_SECONDS", 1.0)
    server = socket.create_server(("127.0.0.1", 0))
    empty_block = b"\x00\x00\x00\xff\xff"  # a non-final stored block of length 0

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n"
                + gzip.compress(b"")[:10]
            )
            try:
                for _ in range(20):
                    time.sleep(0.2)
                    conn.sendall(empty_block)
            except OSError:
                pass  # the relay hung up at its deadline: what this test wants

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    relay = make_relay(ARCHETY_BACKEND_URL=f"http://127.0.0.1:{server.getsockname()[1]}")
    queue(relay, writer, "hello")
    delivery = relay.deliver_step(1.0)
    thread.join(10)
    server.close()
    assert delivery.kind == "delivered" and delivery.outcome is not None
    assert delivery.outcome.error == "body_deadline"
