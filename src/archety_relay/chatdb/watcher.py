"""The only user of watchdog: file events on chat.db set an Event, nothing else.

An event is a hint that something may be new, never the truth: the daemon also checks
`PRAGMA data_version` on a timer and the saved cursor decides what is new.

Which observer: on macOS, kqueue. FSEvents reports a file's content change when the writer
*closes* it, and Messages keeps chat.db-wal open for its whole life, so the default observer
there yields no event per message and every message would wait for the timer (p50 about half
the poll interval instead of a few ms). kqueue's NOTE_WRITE/NOTE_EXTEND fire on every write.
watchdog's kqueue emitter watches the directory and each file in it and re-snapshots the
directory after every batch of events, so a recreated WAL is watched again. Elsewhere the
default (inotify on Linux) watching the directory sees every write and every new file.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver


class _Wake(FileSystemEventHandler):
    def __init__(self, names: frozenset[str], wake: threading.Event) -> None:
        self._names = names
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, getattr(event, "dest_path", "")):
            name = Path(str(path)).name if path else ""
            if name in self._names:
                self._wake.set()
                return


def observer_kind(platform: str | None = None) -> str:
    """ "kqueue" on macOS (see the module docstring), else watchdog's default for the platform."""
    return "kqueue" if (platform or sys.platform) == "darwin" else "default"


def _observer(kind: str) -> BaseObserver:
    if kind == "kqueue":
        from watchdog.observers.kqueue import KqueueObserver

        return KqueueObserver()
    from watchdog.observers import Observer

    return Observer()


def watch(chat_db: Path, wake: threading.Event, *, platform: str | None = None) -> BaseObserver:
    """Start an observer on chat.db's directory. Raises whatever stops it (the caller retries
    and logs): an OSError (no watches left), or an observer this platform does not have."""
    names = frozenset({chat_db.name, chat_db.name + "-wal"})
    observer = _observer(observer_kind(platform))
    observer.daemon = True
    observer.schedule(_Wake(names, wake), str(chat_db.parent), recursive=False)
    observer.start()
    return observer


def wal_inode(chat_db: Path) -> int | None:
    """The WAL file's inode, None while there is none."""
    try:
        return os.stat(f"{chat_db}-wal").st_ino
    except OSError:
        return None


def alive(observer: BaseObserver) -> bool:
    """The observer and every emitter thread still run: an emitter that meets an error it
    cannot handle ends, and watchdog does not start it again."""
    return observer.is_alive() and all(emitter.is_alive() for emitter in observer.emitters)


def restart_reason(
    kind: str, running: bool, wal_then: int | None, wal_now: int | None
) -> str | None:
    """Why a running observer must be replaced, or None. kqueue watches each file by its open
    descriptor: a WAL deleted and re-created within one batch of events is a new inode nobody
    watches (../shared/notes/macos.md, "Paper check": "restart the observer when the WAL is
    re-created or an emitter thread dies"); the 1 s check still finds every message meanwhile.
    inotify watches the directory, so there only a dead thread counts."""
    if not running:
        return "emitter_died"
    if kind == "kqueue" and None not in (wal_then, wal_now) and wal_then != wal_now:
        return "wal_recreated"
    return None
