"""`archety-relay logs`: the JSON-lines log, readable, filtered, optionally followed."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from .. import config
from ..logs import LOG_BACKUPS
from ..tools import logview


def _files(log_file: Path) -> list[Path]:
    rotated = [Path(f"{log_file}.{n}") for n in range(LOG_BACKUPS, 0, -1)]
    return [p for p in (*rotated, log_file) if p.exists()]


def _emit(line: str, args: argparse.Namespace, since: float | None, out: TextIO) -> None:
    event = logview.parse(line)
    if event is None:
        if line.strip() and not args.errors:
            out.write(logview.format_raw(line) + "\n")
        return
    if logview.keep(event, errors_only=args.errors, since=since):
        out.write(logview.format_event(event, advise=args.errors) + "\n")


def cmd_logs(args: argparse.Namespace) -> int:
    settings = config.load(require_secret=False)
    since = time.time() - args.since if args.since is not None else None
    files = _files(settings.log_file)
    if not files and not args.follow:
        print(f"no log yet at {settings.log_file}", file=sys.stderr)
        return 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                _emit(line, args, since, sys.stdout)
    sys.stdout.flush()
    if args.follow:
        _follow(settings.log_file, args, since)
    return 0


def _follow(path: Path, args: argparse.Namespace, since: float | None) -> None:
    """Print what is appended; reopen when the file is rotated (new inode or truncated)."""
    handle = open(path, encoding="utf-8", errors="replace") if path.exists() else None  # noqa: SIM115 (reopened on rotation)
    if handle:
        handle.seek(0, os.SEEK_END)
    try:
        while True:
            line = handle.readline() if handle else ""
            if line:
                _emit(line, args, since, sys.stdout)
                sys.stdout.flush()
                continue
            time.sleep(0.3)
            try:
                stat = path.stat()
            except OSError:
                continue
            if (
                handle is None
                or os.fstat(handle.fileno()).st_ino != stat.st_ino
                or (stat.st_size < handle.tell())
            ):
                if handle:
                    handle.close()
                handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except KeyboardInterrupt:
        pass
    finally:
        if handle:
            handle.close()
