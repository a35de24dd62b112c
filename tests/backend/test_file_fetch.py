"""Fetching a file the persona sends (issue #19) cannot be turned against the Mac.

Real loopback servers: the stand-in backend (which serves `/files/…` behind the secret) and a
second origin that records what it was sent, or misbehaves on purpose (a 150 MB body, a body
without a length, a trickle). The relay's own `Backend` client fetches; nothing is mocked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import serving

from archety_relay.backend.client import Backend
from archety_relay.backend.files import Fetched, FetchFailed, url_problem
from archety_relay.config import Secret
from archety_relay.demo.stub_backend import Behaviour, StubBackend

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
MB = 1024 * 1024


class Misbehaving(ThreadingHTTPServer):
    """Another origin on loopback: records each request's headers, serves by path."""

    daemon_threads = True

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.sent_bytes = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the relay hanging up on a body it refused is the point


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Misbehaving

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(dict(self.headers.items()))
        block = b"\0" * (64 * 1024)
        if self.path == "/pic.png":
            self._answer(200, PNG, {"Content-Length": str(len(PNG))})
        elif self.path == "/declared-150mb":
            self._answer(200, b"", {"Content-Length": str(150 * MB)}, end=False)
            for _ in range(16):  # a little of it; the relay should have hung up already
                self.wfile.write(block)
        elif self.path == "/undeclared-150mb":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(150 * 16):
                self.wfile.write(block)
                self.server.sent_bytes += len(block)
        elif self.path == "/trickle":
            self._answer(200, b"", {"Content-Length": "1000"}, end=False)
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path == "/to-file":
            self._answer(302, b"", {"Location": "file:///etc/passwd", "Content-Length": "0"})
        else:
            self._answer(404, b"", {"Content-Length": "0"})

    def _answer(self, status: int, body: bytes, headers: dict[str, str], end: bool = True) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if end:
            self.wfile.write(body)


@pytest.fixture
def other() -> Iterator[Misbehaving]:
    yield from serving(Misbehaving())


@pytest.fixture
def client(backend: StubBackend, secret: str) -> Iterator[Backend]:
    made = Backend(backend.url, "test-agent", lambda: Secret(secret))
    yield made
    made.close()


def _fetch(client: Backend, url: str, dest: Path, **kw: Any) -> Fetched | FetchFailed:
    return client.fetch_file(url, dest, kw.pop("max_bytes", 100 * MB), **kw)


def test_a_picture_from_the_backend_arrives_intact_with_the_secret(
    client: Backend, backend: StubBackend, secret: str, tmp_path: Path
) -> None:
    """The backend's own origin gets the Bearer secret; the bytes and their sha256 arrive."""
    url = backend.serve_file("menu.png", PNG, "image/png")
    got = _fetch(client, url, tmp_path / "out")
    assert isinstance(got, Fetched), got
    assert (tmp_path / "out").read_bytes() == PNG
    assert got.size == len(PNG) and got.content_type == "image/png"
    (get,) = backend.gets()
    assert get.headers["Authorization"] == f"Bearer {secret}"


def test_another_origin_gets_no_secret_even_by_redirect(
    client: Backend, backend: StubBackend, other: Misbehaving, secret: str, tmp_path: Path
) -> None:
    """A file on another host (or port), directly or by a redirect from the backend, is fetched
    without the Authorization header: the secret never leaves for another origin."""
    assert isinstance(_fetch(client, other.url + "/pic.png", tmp_path / "a"), Fetched)
    backend.script("/files/moved", Behaviour(302, headers={"Location": other.url + "/pic.png"}))
    got = _fetch(client, backend.url + "/files/moved", tmp_path / "b")
    assert isinstance(got, Fetched) and (tmp_path / "b").read_bytes() == PNG
    assert len(other.seen) == 2
    assert all("Authorization" not in h for h in other.seen)
    assert all(secret not in str(h) for h in other.seen)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://example.com/picture.png",
        "ftp://127.0.0.1/x",
        "https:///no-host",
        "javascript:alert(1)",
    ],
)
def test_urls_outside_the_rule_are_refused_before_anything_is_opened(
    client: Backend, tmp_path: Path, url: str
) -> None:
    """file:, data:, other schemes and plain http to a remote host: scheme_not_allowed, no file."""
    got = _fetch(client, url, tmp_path / "out")
    assert isinstance(got, FetchFailed) and got.reason.startswith("scheme_not_allowed"), got
    assert not (tmp_path / "out").exists()
    assert url_problem("http://[::1]:9/x") is None and url_problem("https://cdn.example/x") is None


def test_a_redirect_off_the_rule_is_not_followed(
    client: Backend, other: Misbehaving, tmp_path: Path
) -> None:
    """A redirect to file:///etc/passwd is refused like the URL itself would be."""
    got = _fetch(client, other.url + "/to-file", tmp_path / "out")
    assert isinstance(got, FetchFailed) and got.reason.startswith("scheme_not_allowed")
    assert not (tmp_path / "out").exists()


def test_150_mb_declared_is_refused_on_content_length(
    client: Backend, other: Misbehaving, tmp_path: Path
) -> None:
    """Content-Length over ARCHETY_SEND_FILE_MAX_BYTES (100 MB): too_large before the body."""
    got = _fetch(client, other.url + "/declared-150mb", tmp_path / "out")
    assert got == FetchFailed("too_large")
    assert not (tmp_path / "out").exists()


def test_150_mb_without_a_length_is_cut_at_the_cap_and_nothing_is_left(
    client: Backend, other: Misbehaving, tmp_path: Path
) -> None:
    """No Content-Length: the cap is checked while streaming; the partial file is removed."""
    got = _fetch(client, other.url + "/undeclared-150mb", tmp_path / "out")
    assert got == FetchFailed("too_large")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_trickle_meets_the_total_deadline(
    client: Backend, other: Misbehaving, tmp_path: Path
) -> None:
    """A byte every 50 ms never times out a single read; the whole fetch has one deadline."""
    got = _fetch(client, other.url + "/trickle", tmp_path / "out", deadline_seconds=0.5)
    assert got == FetchFailed("download_failed: deadline passed")
    assert not (tmp_path / "out").exists()


def test_missing_and_failing_files_say_so(
    client: Backend, backend: StubBackend, tmp_path: Path
) -> None:
    """404 is not_found; a 500 is download_failed with the status; no file either way."""
    assert _fetch(client, backend.url + "/files/none", tmp_path / "a") == FetchFailed("not_found")
    backend.serve_file("err.png", PNG, "image/png")
    backend.script("/files/err.png", Behaviour(500))
    got = _fetch(client, backend.url + "/files/err.png", tmp_path / "b")
    assert got == FetchFailed("download_failed: http 500")
    assert list(tmp_path.iterdir()) == []
