"""Attacks on the fetch of a file the persona sends (issue #19), each found to work once.

Real loopback servers: the stand-in backend (the relay's own origin, behind the secret) and a
second stand-in backend with another secret, playing the host that must never get ours; a raw
socket server for answers no well-behaved server writes. The relay's `Backend` client fetches.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from archety_relay.backend.client import Backend
from archety_relay.backend.files import Fetched, FetchFailed
from archety_relay.config import Secret
from archety_relay.demo.stub_backend import Behaviour, StubBackend

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
MB = 1024 * 1024


@pytest.fixture
def elsewhere() -> Iterator[StubBackend]:
    """Another origin on loopback: records every GET with its headers."""
    with StubBackend("not-ours") as server:
        yield server


@pytest.fixture
def client(backend: StubBackend, secret: str) -> Iterator[Backend]:
    made = Backend(backend.url, "test-agent", lambda: Secret(secret))
    yield made
    made.close()


def _authority(server: StubBackend) -> str:
    return server.url.removeprefix("http://")


def test_a_backslash_in_the_authority_does_not_carry_the_secret_elsewhere(
    client: Backend, backend: StubBackend, elsewhere: StubBackend, secret: str, tmp_path: Path
) -> None:
    """`http://other\\@backend/…`: Python's urlsplit reads the host after the `@` (the
    backend's), requests connects to the host before the backslash. The secret was chosen by
    the first reading and sent to the second host; directly or by a redirect, that host now gets
    no Authorization header (the same trick works for https and any remote host)."""
    tricky = f"http://{_authority(elsewhere)}\\@{_authority(backend)}/files/x.png"
    client.fetch_file(tricky, tmp_path / "a", MB)
    backend.script("/files/moved", Behaviour(302, headers={"Location": tricky}))
    client.fetch_file(backend.url + "/files/moved", tmp_path / "b", MB)
    assert len(elsewhere.gets()) == 2  # both went there: the check is not vacuous
    for got in elsewhere.gets():
        assert "Authorization" not in got.headers, got.headers
        assert secret not in str(got.headers)


@pytest.mark.parametrize("location", ["http://[::1/x", "http://127.0.0.1:99999/x"])
def test_a_malformed_redirect_is_a_failed_file_not_an_exception(
    client: Backend, backend: StubBackend, tmp_path: Path, location: str
) -> None:
    """A Location that is not a URL (a broken IPv6 literal, a port out of range) fails the file
    with a reason; it used to raise ValueError out of the fetch, which left the row pending and
    its chat stuck behind it (see tests/outbound/test_file_attacks.py)."""
    backend.script("/files/bad", Behaviour(302, headers={"Location": location}))
    got = client.fetch_file(backend.url + "/files/bad", tmp_path / "out", MB)
    assert isinstance(got, FetchFailed), got
    assert not (tmp_path / "out").exists()


class _TrickledHeaders:
    """A raw server that answers its first connection with a status line and then a header
    line one byte at a time, for much longer than the fetch's deadline. Records whether it got
    to the end (it does only if the client never hung up)."""

    BYTES = 400

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.completed: bool | None = None
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow.png"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(self.BYTES):
                # A byte every 20 ms: each read is answered in time, the whole never is.
                threading.Event().wait(0.02)
                conn.sendall(b"a")
            conn.sendall(b"\r\nContent-Length: 3\r\n\r\nabc")
            self.completed = True
        except OSError:
            self.completed = False
        finally:
            conn.close()
            self.sock.close()
            self.done.set()


def test_headers_trickled_byte_by_byte_meet_the_fetch_deadline(
    client: Backend, tmp_path: Path
) -> None:
    """The deadline covers the status line and headers too: a server that sends a header a
    byte every 20 ms is hung up on at the deadline (0.5 s), long before its line is out. It was
    read to the end (8 s here; 100 lines of 64 KiB each at that pace would be months), holding
    the fetch's thread and its chat."""
    server = _TrickledHeaders()
    got = client.fetch_file(server.url, tmp_path / "out", MB, deadline_seconds=0.5)
    assert isinstance(got, FetchFailed) and got.reason.startswith("download_failed"), got
    assert server.done.wait(30)
    assert server.completed is False  # the relay hung up before the headers were out
    assert not (tmp_path / "out").exists()


def test_a_remote_backend_never_makes_the_relay_fetch_from_loopback(
    backend: StubBackend, secret: str, tmp_path: Path
) -> None:
    """With the backend on a remote host (production), plain http to loopback is refused: the
    URL comes from the persona's answer, so a conversation could point it at a service on the
    Mac (the relay's own /metrics, a local dev server) and have the answer sent into the chat.
    http to loopback stays allowed while the backend itself is on loopback (tests, the demo)."""
    url = backend.serve_file("local.png", PNG, "image/png", needs_secret=False)
    remote = Backend("https://backend.example.invalid", "test-agent", lambda: Secret(secret))
    try:
        got = remote.fetch_file(url, tmp_path / "out", MB)
        assert isinstance(got, FetchFailed) and got.reason.startswith("scheme_not_allowed"), got
        local = remote.fetch_file(url.replace("127.0.0.1", "localhost"), tmp_path / "out", MB)
        assert isinstance(local, FetchFailed), local
    finally:
        remote.close()
    assert backend.gets() == []
    on_loopback = Backend(backend.url, "test-agent", lambda: Secret(secret))
    try:
        assert isinstance(on_loopback.fetch_file(url, tmp_path / "ok", MB), Fetched)
    finally:
        on_loopback.close()


def test_a_redirect_from_elsewhere_into_the_backend_gets_no_secret(
    client: Backend, backend: StubBackend, elsewhere: StubBackend, tmp_path: Path
) -> None:
    """Another host redirects to one of the backend's pages: that hop goes without the secret
    (the backend answers 401 and the file fails), so a host the persona was pointed at cannot
    choose what the relay fetches with our secret and sends into the chat. It went with it."""
    private = backend.serve_file("private.png", PNG, "image/png")
    elsewhere.set_default("/pic.png", Behaviour(302, headers={"Location": private}))
    got = client.fetch_file(elsewhere.url + "/pic.png", tmp_path / "out", MB)
    assert isinstance(got, FetchFailed), got
    (get,) = backend.gets()
    assert "Authorization" not in get.headers
    assert isinstance(client.fetch_file(private, tmp_path / "direct", MB), Fetched)
