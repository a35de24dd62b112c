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
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()  # .at: the deadline (monotonic) of this thread's exchange


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


class _Connection(HTTPConnection):
    response_class = _Response


class _TLSConnection(HTTPSConnection):
    response_class = _Response


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
