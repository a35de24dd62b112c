"""The only user of watchdog: file events on chat.db set an Event, nothing else.

An event is a hint that something may be new, never the truth: FSEvents can miss WAL writes and a
kqueue watch goes blind when Messages recreates chat.db-wal, so the daemon also checks on a timer
and the saved cursor decides what is new. We watch the directory (not the files) so a recreated
WAL or a replaced chat.db is still seen.
"""

from __future__ import annotations

import threading
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = structlog.get_logger("archety_relay.watcher")


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


def watch(chat_db: Path, wake: threading.Event) -> BaseObserver | None:
    """Start an observer on chat.db's directory; None (and a log line) when it cannot start."""
    names = frozenset({chat_db.name, chat_db.name + "-wal"})
    observer = Observer()
    observer.daemon = True
    try:
        observer.schedule(_Wake(names, wake), str(chat_db.parent), recursive=False)
        observer.start()
    except OSError as exc:
        log.warning("watcher_unavailable", error=str(exc), fallback="timer_checks_only")
        return None
    return observer
