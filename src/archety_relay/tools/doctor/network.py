"""Checks of the way to the backend: its URL, its name in DNS, whether it takes the secret."""

from __future__ import annotations

import socket
import urllib.parse

from ... import config
from ...backend.client import Backend
from ...config import Settings
from ...errors import (
    EXIT_AUTH,
    EXIT_BACKEND,
    EXIT_CONFIG,
)
from .result import Check


def url_check(settings: Settings) -> Check:
    parts = urllib.parse.urlsplit(settings.backend_url)
    if parts.scheme == "https":
        return Check("backend URL", True, f"{settings.backend_url} (https)")
    if config.is_loopback(parts.hostname):
        return Check("backend URL", True, f"{settings.backend_url} (loopback)")
    return Check(
        "backend URL",
        False,
        f"{settings.backend_url} is plain http",
        "use https: the secret would travel in clear text",
        EXIT_CONFIG,
    )


def dns_check(settings: Settings) -> Check:
    parts = urllib.parse.urlsplit(settings.backend_url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError as exc:
        return Check(
            "DNS",
            False,
            f"{host} does not resolve: {exc}",
            "check the Mac mini's network and DNS settings",
            EXIT_BACKEND,
        )
    address = infos[0][4][0] if infos else "?"
    return Check("DNS", True, f"{host} → {address}")


def backend_check(settings: Settings) -> Check:
    backend = Backend.from_settings(settings, read_timeout=10.0)
    try:
        outcome = backend.heartbeat()
    finally:
        backend.close()
    if outcome.ok:
        return Check(
            "backend accepts secret",
            True,
            f"heartbeat {outcome.summary()}",
        )
    if outcome.status in (401, 403):
        return Check(
            "backend accepts secret",
            False,
            f"heartbeat rejected with HTTP {outcome.status}: the backend does not accept "
            f"RELAY_WEBHOOK_SECRET (from {settings.secret_source})",
            "set the current secret: archety-relay set-secret (or fix .env / the environment)",
            EXIT_AUTH,
        )
    if outcome.status is None:
        return Check(
            "backend accepts secret",
            False,
            f"no answer from {settings.backend_url} ({outcome.error})",
            "check the URL and the network; messages queue meanwhile",
            EXIT_BACKEND,
        )
    return Check(
        "backend accepts secret",
        False,
        f"heartbeat answered HTTP {outcome.status}",
        "the backend is failing; messages queue meanwhile",
        EXIT_BACKEND,
    )
