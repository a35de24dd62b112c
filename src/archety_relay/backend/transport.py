"""The backend client's transport: a requests session whose every exchange ends by one deadline.

A read timeout bounds each wait for a packet, not the whole answer. urllib3 says so of its own
`Timeout` ("if a server streams one byte every fifteen seconds, a timeout of 20 seconds will not
trigger"), and `Timeout(total=...)` only shortens that per-packet wait once, before the status
line is read. A backend or proxy that trickled its status line or headers therefore held a lane,
or the timer thread that carries heartbeat, sync and prune, for as long as it liked: http.client
accepts 100 header lines of 64 KiB each (review 2026-12-04, #9).

Here the reader under http.client's response sets the socket timeout to what is left of the
exchange's deadline before every read, so the status line, the headers and the body all end by
it, and a read past it fails as a read timeout. No thread is involved: a watchdog timer per
request was measured at ~0.4 ms, a third of a message's whole cost in a burst. Sending needs no
help: a blocking `sendall` with a timeout is bounded in total since Python 3.5.

Connecting has two more waits. The TLS handshake is bounded in total by the socket timeout
urllib3 sets for connecting (CPython's `do_handshake` computes one deadline from it, and a
handshake trickled a byte every 0.3 s was measured to end at the connect timeout). Name
resolution is not bounded at all: `getaddrinfo` blocks for as long as the system resolver
takes. So on this thread, inside `deadline`, a name is resolved in a daemon thread waited for
only until the deadline; a lookup that outlives it fails the request as a connect timeout and
its thread ends when the resolver gives up (at most `_LINGERING_LOOKUPS` at once). An address
given as an IP literal, and a connection kept alive, never look anything up.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

_current = threading.local()  # .at: the deadline (monotonic) of this thread's exchange
# Lookups that may be running at once. One that outlives its request keeps its thread until the
# system resolver gives up; while the resolver hangs, this caps how many such threads there are.
_LINGERING_LOOKUPS = 8
_lookups = threading.BoundedSemaphore(_LINGERING_LOOKUPS)


@contextlib.contextmanager
def deadline(at: float) -> Iterator[None]:
    """Every response read on this thread inside the block, headers included, ends by `at`
    (monotonic); a read that would go past it raises a read timeout."""
    _current.at = at
    try:
        yield
    finally:
        _current.at = None


def new_session() -> requests.Session:
    """A session whose connections honour `deadline`."""
    session = requests.Session()
    adapter = _Adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side that never waits past the deadline, however the bytes trickle."""

    def __init__(self, raw: Any, sock: socket.socket, at: float) -> None:
        super().__init__()
        self._raw = raw  # the socket's own reader (it counts as one of the socket's users)
        self._sock = sock
        self._at = at
        self._per_read = sock.gettimeout()  # the read timeout urllib3 has just set

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int | None:
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError("the exchange's deadline has passed")
        self._sock.settimeout(left if self._per_read is None else min(self._per_read, left))
        return int(self._raw.readinto(b))

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Response(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        at = getattr(_current, "at", None)
        if at is not None:
            # Nothing was read through the buffer yet: its raw reader is taken out (detached,
            # so the old buffer never closes it) and read through the deadline instead.
            self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, at))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int, within: float) -> list[Any]:
    """`getaddrinfo` for a TCP connection, waited for at most `within` seconds (TimeoutError)."""
    started = time.monotonic()
    if within <= 0 or not _lookups.acquire(timeout=within):
        raise TimeoutError("no time left to resolve the name")
    found: list[Any] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def look() -> None:
        try:
            family = connection.allowed_gai_family()
            found.extend(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the waiting request, raised there
            failed.append(exc)
        finally:
            _lookups.release()
            done.set()

    threading.Thread(target=look, name="resolve", daemon=True).start()
    if not done.wait(max(0.0, within - (time.monotonic() - started))):
        raise TimeoutError("name resolution outlasted the request's deadline")
    if failed:
        raise failed[0]
    return found


class _BoundedConnect(HTTPConnection):
    """Resolves the backend's name within the exchange's deadline, then connects as urllib3
    does, trying each address in turn (see the module docstring)."""

    def _new_conn(self) -> socket.socket:
        at = getattr(_current, "at", None)
        if at is None or _is_ip(self._dns_host):
            return super()._new_conn()
        try:
            addresses = _resolve(self._dns_host, self.port, at - time.monotonic())
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Resolving {self.host} timed out.") from exc
        error: Exception = NewConnectionError(self, "getaddrinfo returned no address")
        for *_, sockaddr in addresses:
            try:
                return connection.create_connection(
                    (sockaddr[0], self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                error = ConnectTimeoutError(self, f"Connection to {self.host} timed out.")
                error.__cause__ = exc
            except OSError as exc:
                error = NewConnectionError(self, f"Failed to establish a new connection: {exc}")
                error.__cause__ = exc
        raise error


class _Connection(_BoundedConnect):
    response_class = _Response


class _TLSConnection(_BoundedConnect, HTTPSConnection):
    response_class = _Response


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
