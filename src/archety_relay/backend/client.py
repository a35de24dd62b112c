"""The only user of `requests` (with `transport`, its session): the Archety backend's endpoints.

Failures come back as `HttpOutcome` values (see policy); requests' exceptions never leave here.
The session is built so nothing but our settings decides where the secret goes:
- `trust_env = False`: a `~/.netrc` entry would silently replace our Bearer header, and proxy
  variables from the environment would route the secret through a proxy;
- redirects are never followed: requests would turn a redirected POST into a GET that returns
  200, which looks exactly like a delivery.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3
from urllib3.filepost import encode_multipart_formdata

from .. import __version__
from ..config import Secret, Settings, is_loopback
from ..policy import HttpOutcome
from . import files, transport

MESSAGE_PATH = "/orchestrator/message"
HEARTBEAT_PATH = "/orchestrator/heartbeat"
SYNC_PATH = "/edge/sync"
PHOTO_UPLOAD_PATH = "/photo/upload"
# An answer larger than this is not read further: a reply or a sync answer is a few KB, and an
# endless body must not exhaust memory. A 2xx stays a delivery; its body is cut here.
MAX_BODY_BYTES = 1024 * 1024
# Once the headers are in, the body must arrive within this long. The read timeout bounds each
# wait for a packet, not the total, so a proxy that trickles a byte a second would otherwise
# hold a lane (or the timer thread) forever. The whole exchange, status line and headers
# included, ends by connect + read timeout + this (125 s for a message, 50 s for a sync):
# see transport.
BODY_DEADLINE_SECONDS = 30.0
# Heartbeat and sync are answered at once by the backend; only the orchestrator's message
# endpoint waits for an LLM, so only it gets the long read timeout.
CONTROL_READ_TIMEOUT_SECONDS = 15.0
_READ_SIZE = 64 * 1024


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Backend:
    def __init__(
        self,
        base_url: str,
        agent_id: str,
        secret: Callable[[], Secret],
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 90.0,
        control_read_timeout: float = CONTROL_READ_TIMEOUT_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.agent_id = agent_id
        self._secret = secret
        self._timeout = (connect_timeout, read_timeout)
        self._control_timeout = (connect_timeout, min(read_timeout, control_read_timeout))
        # One keep-alive session per thread: requests.Session is not thread-safe, each
        # delivery lane is a thread with its own connection, and no lane ever waits behind a
        # slow heartbeat.
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        secret: Callable[[], Secret] | None = None,
        read_timeout: float | None = None,
    ) -> Backend:
        """A client for the configured backend; `secret` may change at run time (rotation)."""
        return cls(
            settings.backend_url,
            settings.agent_id,
            secret or (lambda: settings.secret),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout if read_timeout is None else read_timeout,
        )

    @property
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = transport.new_session()
            session.trust_env = False
            session.max_redirects = 0
            self._local.session = session
            self._sessions.append(session)
        return session

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._secret().reveal()}",
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",  # answers are small; see _read_bounded
            "User-Agent": f"Archety-Edge-Client/{self.agent_id}",
            "X-Edge-Agent-Id": self.agent_id,
            "X-Relay-Version": __version__,
        }
        if extra:
            headers.update(extra)
        return headers

    def post(
        self,
        path: str,
        body: bytes,
        extra: dict[str, str] | None = None,
        *,
        timeout: tuple[float, float] | None = None,
    ) -> HttpOutcome:
        started = time.monotonic()
        connect, read = timeout or self._timeout
        ends = started + connect + read + BODY_DEADLINE_SECONDS
        try:
            # Prepared directly rather than through session.post: there are no cookies, auth
            # hooks or environment settings to merge (trust_env is off), and skipping the merge
            # is a measurable share of the per-message cost in a burst (docs/benchmarks.md).
            prepared = requests.Request(
                "POST", self.base_url + path, data=body, headers=self._headers(extra)
            ).prepare()
            with transport.deadline(ends):
                response = self._session.send(
                    prepared, timeout=(connect, read), allow_redirects=False, stream=True
                )
                try:
                    content, body_error = _read_bounded(response, ends)
                finally:
                    response.close()
            if body_error == "reset":
                # The answer broke off: its reply is lost. The same bytes and Idempotency-Key
                # again let the backend answer the same way without acting twice.
                return self._failed("reset", started)
        except requests.exceptions.ConnectTimeout:
            return self._failed("connect_timeout", started)
        except requests.exceptions.Timeout:
            return self._failed("timeout", started)
        except requests.exceptions.SSLError:
            return self._failed("tls", started)
        except requests.exceptions.ConnectionError as exc:
            kind = "reset" if _is_reset(exc) else "connect"
            return self._failed(kind, started)
        except requests.exceptions.RequestException:
            return self._failed("other", started)
        return HttpOutcome(
            status=response.status_code,
            error=body_error,
            retry_after=parse_retry_after(response.headers.get("Retry-After"), time.time()),
            # Always UTF-8 (JSON's encoding), whatever the Content-Type says: requests would
            # decode a text/plain body without a charset as ISO-8859-1 and mangle emoji.
            body=content.decode("utf-8", "replace"),
            elapsed_ms=(time.monotonic() - started) * 1000,
        )

    @staticmethod
    def _failed(kind: str, started: float) -> HttpOutcome:
        return HttpOutcome(status=None, error=kind, elapsed_ms=(time.monotonic() - started) * 1000)

    def post_message(self, body: bytes, message_guid: str) -> HttpOutcome:
        return self.post(MESSAGE_PATH, body, {"Idempotency-Key": header_value(message_guid)})

    def upload_photo(
        self, fields: dict[str, str], filename: str, data: bytes, mime: str, attachment_guid: str
    ) -> HttpOutcome:
        """`POST /photo/upload`: multipart text `fields` plus the picture as part `file`.

        The body is built here (a few MB at most) and sent through `post`, so an upload has the
        same headers, timeouts and failure values as a message; the attachment guid is the
        Idempotency-Key, so a retry after a lost answer is recognisable.
        """
        parts: list[Any] = list(fields.items())
        parts.append(("file", (filename, data, mime)))
        body, content_type = encode_multipart_formdata(parts)
        extra = {"Content-Type": content_type, "Idempotency-Key": header_value(attachment_guid)}
        return self.post(PHOTO_UPLOAD_PATH, body, extra)

    def fetch_file(
        self,
        url: str,
        dest: Path,
        max_bytes: int,
        deadline_seconds: float = files.FETCH_DEADLINE_SECONDS,
    ) -> files.Fetched | files.FetchFailed:
        """A file the persona sends, into `dest` (see files): the secret goes with the request
        only when the URL is on the backend's own origin, and every hop before it was too."""
        own = files.origin(self.base_url)
        # Once a hop has been elsewhere, no later hop gets the secret (as curl drops it): a
        # host that redirects to the backend would otherwise choose which of the backend's
        # pages is fetched with our secret, and its answer would be sent into the chat.
        left: list[bool] = []

        def headers_for(url: str) -> dict[str, str]:
            headers = {
                "Accept-Encoding": "identity",
                "User-Agent": f"Archety-Edge-Client/{self.agent_id}",
            }
            if own is None or files.origin(url) != own:
                left.append(True)
            elif not left:
                headers["Authorization"] = f"Bearer {self._secret().reveal()}"
            return headers

        # A session of its own, closed after: each fetch runs on a thread of its own (see
        # outbound.fetches), so a session kept per thread would leave a connection open for
        # every file ever sent. Not the backend's session either: its `max_redirects = 0` makes
        # requests raise on any 3xx even with allow_redirects off, and files.fetch follows
        # redirects itself, each hop checked. The transport's, so one deadline ends it all.
        with transport.new_session() as session:
            session.trust_env = False
            return files.fetch(
                session,
                url,
                dest,
                headers_for=headers_for,
                max_bytes=max_bytes,
                connect_timeout=self._timeout[0],
                loopback=own is not None and is_loopback(own[1]),
                deadline_seconds=deadline_seconds,
            )

    def heartbeat(self) -> HttpOutcome:
        return self.post(
            HEARTBEAT_PATH,
            _json({"edge_agent_id": self.agent_id}),
            timeout=self._control_timeout,
        )

    def sync(self, payload: dict[str, Any]) -> HttpOutcome:
        return self.post(SYNC_PATH, _json(payload), timeout=self._control_timeout)


def _read_bounded(response: requests.Response, ends: float) -> tuple[bytes, str | None]:
    """The body, at most MAX_BODY_BYTES, within BODY_DEADLINE_SECONDS and before the exchange
    `ends` (monotonic): (bytes, error).

    A body cut by a size or time bound keeps its status (a 2xx is a delivery: posting again
    would only bring the same endless answer); a connection that breaks mid-body is "reset".
    `read1` returns whatever one socket read brings, so the deadline is checked between
    packets however slowly they trickle. Past either bound the connection is dropped (the
    caller closes the response) and what arrived so far is kept.
    """
    deadline = min(ends, time.monotonic() + BODY_DEADLINE_SECONDS)
    raw = response.raw
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            # Never unpacked: we ask for identity, and a compressed answer sent anyway could
            # unpack past the size cap, or trickle blocks that unpack to nothing so this
            # loop never reaches the clock. Its bytes are kept as they came (unreadable).
            chunk = raw.read1(_READ_SIZE, decode_content=False)
            if not chunk:
                return b"".join(parts), None
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return b"".join(parts)[:MAX_BODY_BYTES], "too_large"
            if time.monotonic() > deadline:
                return b"".join(parts), "body_deadline"
    except (urllib3.exceptions.HTTPError, OSError):
        if time.monotonic() >= ends:  # the transport's read timed out at the exchange's end
            return b"".join(parts), "body_deadline"
        return b"".join(parts), "reset"


def header_value(text: str) -> str:
    """A value from chat.db fit for a header: printable ASCII kept as it is (every real guid),
    anything else percent-encoded. HTTP sends headers as latin-1 and refuses CR/LF, so a guid
    with other characters failed every attempt and held the queue; this keeps the key stable."""
    return urllib.parse.quote(text, safe="".join(chr(c) for c in range(0x21, 0x7F) if c != 0x25))


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _is_reset(exc: Exception) -> bool:
    text = repr(exc)
    return any(s in text for s in ("Connection reset", "RemoteDisconnected", "ProtocolError"))
