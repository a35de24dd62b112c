"""What several commands share: loading settings and setting up logs from the flags."""

from __future__ import annotations

import argparse
import logging

import structlog

from .. import config, logs
from ..config import Secret, Settings

log = structlog.get_logger("archety_relay.cli")


def settings_and_logs(args: argparse.Namespace, *, require_secret: bool = True) -> Settings:
    settings = config.load(require_secret=require_secret)
    setup_logs(args, settings)
    return settings


def setup_logs(args: argparse.Namespace, settings: Settings) -> None:
    verbose = bool(getattr(args, "verbose", False))
    problems = logs.configure(
        log_file=settings.log_file,
        console=getattr(args, "log_format", None) or ("console" if verbose else "auto"),
        level=logging.INFO,
        console_level=logging.DEBUG if verbose else None,
        secrets=(settings.secret.reveal(),) if settings.secret.reveal() else (),
    )
    for problem in problems:
        log.warning("log_file_unwritable", problem=problem)
    for note in settings.notes:
        kind, _, detail = note.partition(":")
        log.warning(kind, detail=detail)


def reload_secret() -> Secret:
    """Re-read configuration for a rotated secret; the redactor learns the new value first."""
    secret = config.load().secret
    logs.REDACTOR.add_secret(secret.reveal())
    return secret
