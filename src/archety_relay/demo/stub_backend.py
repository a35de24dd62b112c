"""A stand-in Archety backend on 127.0.0.1 that records what it receives and misbehaves on cue.

Used by the demo, the tests and the benchmarks. It checks the Bearer secret like the real one
(401 otherwise). Behaviours are queued with `script()`: a status with headers and body, a delay,
a hang (accept, never answer), or a reset mid-response; unscripted requests get 200.
`POST /photo/upload` is parsed as the multipart form it is (text fields and the file part) and
answered like the real endpoint: `photo_id` and `photo_url`, the same id again for an
Idempotency-Key it has already accepted. `GET /files/<name>` serves what `serve_file` put there
(a picture the persona sends), behind the same secret; every GET is recorded with its headers,
so a test can see which origin got the secret.

Like the real orchestrator where it matters: `answer_delay` makes every message answer take
that long (an LLM writes the reply), `sender_limit=(n, seconds)` answers 429 with Retry-After
to a sender past n messages in the window (the backend limits per phone), and `respond_with`
picks a behaviour from the request body (this chat hangs, that text fails).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Behaviour:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False  # accept, read, and never answer (until the server stops)
    reset: bool = False  # start a response, then reset the connection


@dataclass(frozen=True)
class FilePart:
    filename: str | None
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON; for a multipart form, its text fields as a dict
    raw: bytes
    at: float  # time.time() when the request was read
    status: int  # what we answered (0: no answer)
    files: dict[str, FilePart] = field(default_factory=dict)
    answered_at: float = 0.0  # time.time() when the answer was sent (0: none)


PHOTO_UPLOAD = "/photo/upload"


def parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, str], dict[str, FilePart]]:
    """A multipart/form-data body, read with the standard MIME parser: (fields, files)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, str] = {}
    files: dict[str, FilePart] = {}
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        decoded = part.get_payload(decode=True)
        payload = decoded if isinstance(decoded, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = FilePart(filename, part.get_content_type(), payload)
        else:
            fields[str(name)] = payload.decode("utf-8")
    return fields, files


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up (a killed relay) is part of the tests, not an error


class StubBackend:
    def __init__(
        self,
        secret: str,
        *,
        on_message: Callable[[Received], None] | None = None,
        on_upload: Callable[[Received], None] | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        answer_delay: float = 0.0,
        sender_limit: tuple[int, float] | None = None,
    ) -> None:
        self.secret = secret
        self.answer_delay = answer_delay
        self._sender_limit = sender_limit
        self._sender_hits: dict[str, deque[float]] = {}
        self._responders: dict[str, Callable[[Any], Behaviour | None]] = {}
        self.received: list[Received] = []
        self._scripts: dict[str, deque[Behaviour]] = {}
        self._default: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition()
        self._stopping = threading.Event()
        self._on_message = on_message
        self._on_upload = on_upload
        self._photo_ids: dict[str, str] = {}  # Idempotency-Key -> photo_id already given
        self._files: dict[str, tuple[bytes, str, bool]] = {}  # path -> data, type, needs secret
        # Acknowledge every event a sync carries, as the real backend does once it stored them.
        self.ack_events = False
        self._server = _Server(("127.0.0.1", port), self._handler_class())
        self._scheme = "http"
        if tls is not None:  # an HTTPS backend, for checking that certificates are verified
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def start(self) -> StubBackend:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True, name="stub-backend"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StubBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting --------------------------------------------------------------------------
    def script(self, path: str, *behaviours: Behaviour) -> None:
        """Answer the next requests to `path` with these behaviours, in order."""
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(behaviours)

    def set_default(self, path: str, behaviour: Behaviour | None) -> None:
        """Answer every unscripted request to `path` like this (None: plain 200)."""
        with self._lock:
            if behaviour is None:
                self._default.pop(path, None)
            else:
                self._default[path] = behaviour

    def respond_with(self, path: str, responder: Callable[[Any], Behaviour | None]) -> None:
        """Choose the behaviour for each unscripted request to `path` from its JSON body
        (None from the responder: the default)."""
        with self._lock:
            self._responders[path] = responder

    def _next(self, path: str, body: Any) -> Behaviour:
        with self._lock:
            queue = self._scripts.get(path)
            if queue:
                return queue.popleft()
            responder = self._responders.get(path)
        chosen = responder(body) if responder else None
        if chosen is not None:
            return chosen
        limited = self._rate_limited(path, body)
        if limited is not None:
            return limited
        with self._lock:
            default = self._default.get(path)
        if default is not None:
            return default
        if path == "/orchestrator/message" and self.answer_delay:
            return Behaviour(delay=self.answer_delay)
        return Behaviour()

    def _rate_limited(self, path: str, body: Any) -> Behaviour | None:
        if self._sender_limit is None or path != "/orchestrator/message":
            return None
        sender = body.get("sender") if isinstance(body, dict) else None
        count, window = self._sender_limit
        now = time.monotonic()
        with self._lock:
            hits = self._sender_hits.setdefault(str(sender), deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) >= count:
                wait = max(1, int(hits[0] + window - now + 0.999))
                return Behaviour(429, {"detail": "rate limited"}, {"Retry-After": str(wait)})
            hits.append(now)
        return None

    def serve_file(
        self, name: str, data: bytes, content_type: str, *, needs_secret: bool = True
    ) -> str:
        """Serve `data` at `GET /files/<name>`; returns its URL."""
        path = f"/files/{name}"
        with self._lock:
            self._files[path] = (data, content_type, needs_secret)
        return self.url + path

    def gets(self) -> list[Received]:
        """Every GET, in arrival order (the headers show whether the secret came with it)."""
        with self._lock:
            return [r for r in self.received if r.body == "GET"]

    # -- what arrived -----------------------------------------------------------------------
    def sync_events(self) -> list[dict[str, Any]]:
        """Every event carried by an accepted `/edge/sync`, in arrival order (repeats included)."""
        return [
            e
            for r in self.requests_to("/edge/sync")
            if r.status == 200 and isinstance(r.body, dict)
            for e in r.body.get("events", [])
        ]

    def messages(self, *, accepted_only: bool = True) -> list[Received]:
        with self._lock:
            return [
                r
                for r in self.received
                if r.path == "/orchestrator/message"
                and (not accepted_only or 200 <= r.status < 300)
            ]

    def uploads(self, *, accepted_only: bool = True) -> list[Received]:
        """Every `POST /photo/upload` (by default only those answered 2xx), in arrival order."""
        return [
            r for r in self.requests_to(PHOTO_UPLOAD) if not accepted_only or 200 <= r.status < 300
        ]

    def _photo_answer(self, received: Received) -> dict[str, Any]:
        key = received.headers.get("Idempotency-Key") or f"anonymous-{len(self.received)}"
        with self._lock:
            photo_id = self._photo_ids.setdefault(key, f"photo-{len(self._photo_ids) + 1}")
        return {
            "photo_id": photo_id,
            "photo_url": f"https://photos.example.invalid/{photo_id}.jpg",
            "status": "stored",
        }

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, predicate: Callable[[StubBackend], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._arrived:
                self._arrived.wait(min(remaining, 0.05))
        return True

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[Received]:
        self.wait_for(lambda b: len(b.messages()) >= count, timeout)
        return self.messages()

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)
        with self._arrived:
            self._arrived.notify_all()
        if self._on_message and received.path == "/orchestrator/message" and received.status == 200:
            self._on_message(received)
        if self._on_upload and received.path == PHOTO_UPLOAD and received.status == 200:
            self._on_upload(received)

    # -- the handler ------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Like any production server: no Nagle delay between headers and body.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items()}
                behaviour = stub._next(self.path, None)
                with stub._lock:
                    served = stub._files.get(self.path)
                status = behaviour.status if served is not None or behaviour.status != 200 else 404
                secret_ok = self.headers.get("Authorization") == f"Bearer {stub.secret}"
                if served is not None and served[2] and not secret_ok:
                    status = 401
                stub._record(Received(self.path, headers, "GET", b"", time.time(), status))
                payload = served[0] if served is not None and status == 200 else b""
                self.send_response(status)
                if served is not None:
                    self.send_header("Content-Type", served[1])
                self.send_header("Content-Length", str(len(payload)))
                for key, value in behaviour.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if len(raw) < length:  # the client died mid-request: nothing was sent
                    self.close_connection = True
                    return
                arrived = time.time()
                content_type = self.headers.get("Content-Type") or ""
                files: dict[str, FilePart] = {}
                body: Any
                if content_type.startswith("multipart/form-data"):
                    body, files = parse_multipart(content_type, raw)
                else:
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        body = None
                headers = {k: v for k, v in self.headers.items()}
                behaviour = stub._next(self.path, body)
                if behaviour.delay:
                    stub._stopping.wait(behaviour.delay)
                if behaviour.hang:
                    stub._record(Received(self.path, headers, body, raw, arrived, 0))
                    stub._stopping.wait(3600)
                    self.close_connection = True
                    return
                if behaviour.reset:
                    stub._record(Received(self.path, headers, body, raw, arrived, 0))
                    self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"pa')
                    self.wfile.flush()
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    return
                status = behaviour.status
                if self.headers.get("Authorization") != f"Bearer {stub.secret}":
                    status = 401
                received = Received(
                    self.path, headers, body, raw, arrived, status, files, time.time()
                )
                stub._record(received)
                reply = behaviour.body
                if reply is None and self.path == PHOTO_UPLOAD and status < 300:
                    reply = stub._photo_answer(received)
                if reply is None and stub.ack_events and self.path == "/edge/sync":
                    events = body.get("events", []) if isinstance(body, dict) else []
                    reply = {"ack_events": [e.get("event_id") for e in events]}
                if reply is None:
                    reply = {"ok": status < 300}
                payload = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in behaviour.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler
