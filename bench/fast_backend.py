"""A minimal asyncio HTTP/1.1 responder for throughput runs, where the stand-in backend
(http.server, one thread per connection, ~2 ms of header parsing per request) would be the
bottleneck and hide the relay's own speed. It answers every POST with 200 and records
(arrival time, body) pairs; nothing else."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any


class FastBackend:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if path == b"/orchestrator/message":
                    self.arrivals.append((time.time(), json.loads(body) if body else None))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 2\r\n\r\n{}"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            writer.close()

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.arrivals) >= count

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
