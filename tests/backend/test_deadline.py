"""Every request ends by one deadline, the status line and the headers included.

The read timeout bounds each wait for a packet, not the whole answer (urllib3 says so of its own
`Timeout`), so a backend or proxy that trickles its headers, a line every few seconds, held a
lane or the timer thread (heartbeat, sync, prune) for as long as it liked: http.client accepts
100 header lines of 64 KiB each (review 2026-12-04, #9). These tests run the real client against
a real server on loopback that misbehaves on purpose.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from archety_relay.backend import client as backend_module
from archety_relay.backend.client import Backend
from archety_relay.config import Secret
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.policy import HttpOutcome

# The trickle outlasts any deadline below by far, and still ends, so the code before the fix
# returns (a 200 after TRICKLE_SECONDS) instead of hanging the test run.
TRICKLE_SECONDS = 12.0
TRICKLE_GAP = 0.2


def trickling_server(first: bytes, line: Callable[[int], bytes]) -> Iterator[int]:
    """A server that sends `first`, then `line(n)` every TRICKLE_GAP s until TRICKLE_SECONDS,
    then ends the headers with a short body. Yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    hung_up = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(first)
                started = time.monotonic()
                n = 0
                while time.monotonic() - started < TRICKLE_SECONDS:
                    time.sleep(TRICKLE_GAP)
                    conn.sendall(line(n))
                    n += 1
                conn.sendall(b"\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                hung_up.set()  # the client gave up at its deadline: what the tests want

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    thread.join(TRICKLE_SECONDS + 5)
    server.close()


@pytest.fixture
def header_trickle() -> Iterator[int]:
    """The status line at once, then one more header line every 0.2 s."""
    yield from trickling_server(b"HTTP/1.1 200 OK\r\n", lambda n: b"X-Pad-%d: x\r\n" % n)


@pytest.fixture
def status_trickle() -> Iterator[int]:
    """The status line itself, one byte every 0.2 s (spaces after the reason phrase)."""
    yield from trickling_server(b"HTTP/1.1 200 OK", lambda n: b" ")


def client(port: int) -> Backend:
    return client_for(f"http://127.0.0.1:{port}")


def client_for(url: str, secret: str = "s" * 32) -> Backend:
    return Backend(
        url,
        "agent-1",
        lambda: Secret(secret),
        connect_timeout=1.0,
        read_timeout=1.0,
        control_read_timeout=1.0,
    )


CALLS: dict[str, Callable[[Backend], HttpOutcome]] = {
    "message": lambda b: b.post_message(b'{"text":"hi"}', "GUID-1"),
    "sync": lambda b: b.sync({"edge_agent_id": "agent-1"}),
    "heartbeat": Backend.heartbeat,
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_trickled_headers_end_at_the_deadline_as_a_timeout(
    call: str, header_trickle: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers trickled a line every 0.2 s for 12 s, with connect and read timeouts of 1 s and
    the body deadline at 1 s: the request ends by its deadline (connect + read + body, 3 s
    here) as a timeout, with no status (the answer never came whole, so a message is retried,
    never taken as delivered), for messages and for the timer thread's heartbeat and sync.
    (Before the fix each line restarted the read timeout: a 200 after 12 s.)"""
    monkeypatch.setattr(backend_module, "BODY_DEADLINE_SECONDS", 1.0)
    backend = client(header_trickle)
    try:
        outcome = CALLS[call](backend)
    finally:
        backend.close()
    assert (outcome.status, outcome.error) == (None, "timeout")


def test_a_status_line_trickled_byte_by_byte_ends_at_the_deadline(
    status_trickle: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a status line that never ends: a space every 0.2 s."""
    monkeypatch.setattr(backend_module, "BODY_DEADLINE_SECONDS", 1.0)
    backend = client(status_trickle)
    try:
        outcome = backend.post_message(b'{"text":"hi"}', "GUID-2")
    finally:
        backend.close()
    assert (outcome.status, outcome.error) == (None, "timeout")


@pytest.fixture
def handshake_trickle() -> Iterator[int]:
    """A TLS server that answers the ClientHello with a 16 KiB handshake record's header, then
    one byte of it every 0.2 s: a handshake that never completes and is never quiet."""
    yield from trickling_server(b"\x16\x03\x03\x40\x00", lambda n: b"\x02")


def test_a_trickled_tls_handshake_ends_by_the_connect_timeout(handshake_trickle: int) -> None:
    """Each trickled byte would restart a per-packet timeout; the handshake instead ends as a
    timeout with no status, well before the trickle does (CPython bounds `do_handshake` in total
    by the socket's timeout, here urllib3's connect timeout). Passed before any change here:
    it pins what the module docstring relies on."""
    backend = client_for(f"https://127.0.0.1:{handshake_trickle}")
    try:
        outcome = backend.post_message(b'{"text":"hi"}', "GUID-3")
    finally:
        backend.close()
    assert (outcome.status, outcome.error) == (None, "timeout")


SLOW_NAME = "slow-resolver.test"


@pytest.fixture
def hanging_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The system resolver hangs for SLOW_NAME (TRICKLE_SECONDS, then "not found") and answers
    every other name as usual. A stand-in: a slow resolver cannot be made on loopback without
    root, and getaddrinfo is the one call that stands for it."""
    real = socket.getaddrinfo
    released = threading.Event()

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == SLOW_NAME:
            released.wait(TRICKLE_SECONDS)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    released.set()


def test_name_resolution_ends_by_the_deadline(
    hanging_resolver: None, backend: StubBackend, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver that hangs (12 s here) no longer holds the request: it ends by its deadline
    (connect + read + body, 3 s here) as a connect timeout, so a message is retried like any
    unreachable backend; a name that resolves still reaches the backend. (Before the fix the
    request waited for the resolver: "connect" after 12 s.)"""
    monkeypatch.setattr(backend_module, "BODY_DEADLINE_SECONDS", 1.0)
    port = backend.url.rsplit(":", 1)[1]
    slow, usual = (client_for(f"http://{host}:{port}", secret) for host in (SLOW_NAME, "localhost"))
    try:
        stuck = slow.post_message(b'{"text":"hi"}', "GUID-4")
        reached = usual.post_message(b'{"text":"hi"}', "GUID-5")
    finally:
        slow.close()
        usual.close()
    assert (stuck.status, stuck.error) == (None, "connect_timeout")
    assert reached.status == 200
