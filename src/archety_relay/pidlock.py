"""One relay per state directory: an exclusive lock on `<state dir>/relay.pid` holding our pid.

Two relays on one outbox would both deliver its head. The lock is released by the kernel when the
process dies (kill -9 included), so a stale file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import RelayError

PID_FILE = "relay.pid"


class AlreadyRunning(RelayError):
    exit_code = 1


class PidLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = running_pid(self.path.parent)
            raise AlreadyRunning(
                f"another archety-relay is running on {self.path.parent} (pid {pid})",
                hint="Stop it first (launchctl bootout gui/$(id -u)/com.archety.relay), "
                "or check it with `archety-relay status`.",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running_pid(state_dir: Path) -> int | None:
    """The pid of the relay holding the lock, or None when no relay holds it."""
    path = state_dir / PID_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
