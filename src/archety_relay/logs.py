"""The only place that configures logging.

JSON lines go to ARCHETY_LOG_FILE (rotating, bounded); readable lines go to stderr when it is a
terminal (or when asked). Everything passes through `redact.Redactor` first. Modules just call
`structlog.get_logger(...)` and log events with fields.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

import structlog

from .redact import Redactor

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5

REDACTOR = Redactor()


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Every file it opens, the first and each one after a rollover, is 0600 (the stock handler
    creates new files with the umask's mode, 0644 on a Mac): phone prefixes and event details
    are nobody else's business."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # a file an older version created 0644
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def _private_log_dir(directory: Path) -> None:
    """Create the log directory 0700. One that exists is left as it is: it may be shared."""
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)


def _private_backups(log_file: Path) -> None:
    """Backups an older version rotated with the umask's mode become 0600 too."""
    for n in range(1, LOG_BACKUPS + 1):
        backup = Path(f"{log_file}.{n}")
        if backup.exists():
            os.chmod(backup, 0o600)


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        REDACTOR,
    ]


def configure(
    *,
    log_file: Path | None,
    console: str | None = "auto",
    level: int = logging.INFO,
    console_level: int | None = None,
    secrets: tuple[str, ...] = (),
) -> list[str]:
    """Set up structlog + stdlib logging. Returns problems worth telling the operator."""
    problems: list[str] = []
    for secret in secrets:
        REDACTOR.add_secret(secret)
    pre_chain = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(min(level, console_level or level))

    if log_file is not None:
        try:
            _private_log_dir(log_file.parent)
            handler = PrivateRotatingFileHandler(
                log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
            )
            _private_backups(log_file)
            handler.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    processor=structlog.processors.JSONRenderer(ensure_ascii=False),
                    foreign_pre_chain=pre_chain,
                )
            )
            handler.setLevel(level)
            root.addHandler(handler)
        except OSError as exc:
            problems.append(f"log file {log_file} cannot be written: {exc}")

    if console == "auto":
        console = "console" if sys.stderr.isatty() else None
    if console in ("console", "json") or problems:
        renderer: Any = (
            structlog.processors.JSONRenderer(ensure_ascii=False)
            if console == "json"
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        )
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(
            structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=pre_chain)
        )
        stream.setLevel(console_level or level)
        root.addHandler(stream)
    # Third-party chatter (urllib3 connection pool, watchdog inotify) stays out of our log.
    for noisy in ("urllib3", "watchdog", "keyring"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return problems
