"""Fetching a file the persona sends (issue #19): a GET that cannot be turned against the Mac.

The URL comes from the backend's answer, so it is checked like anything else from outside:
- `https`, or plain `http` only to loopback (as for ARCHETY_BACKEND_URL); `file:`, `data:` and
  every other scheme are refused before anything is opened; a loopback host only while the
  backend itself is on loopback (tests, the demo), never for a backend elsewhere;
- the host checked is the one requests connects to (`as_sent`), not another reading of it;
- the `Authorization` header goes only to the backend's own origin (scheme, host and port of
  ARCHETY_BACKEND_URL), never to another host, a redirect included;
- redirects are followed by hand, at most a few, each target checked by the same rules;
- the size cap is checked on `Content-Length` and again while streaming, with one deadline for
  the whole fetch (a server trickling a byte a second cannot hold the sender);
- the body is written to the path the caller gives and removed on any failure: a partial file
  is never left behind.

Outcomes are values (`Fetched` or `FetchFailed` with a reason the backend reads); requests'
exceptions never leave this module. The URL is never put in a reason or a log: a signed URL
carries its own credentials in the query.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3

from ..config import is_loopback
from ..model import FileToSend, clean_text
from . import transport

MAX_REDIRECTS = 3
MAX_FILES = 10  # per command or answer
MAX_URL_CHARS = 4096
MAX_FILENAME_CHARS = 255
FETCH_DEADLINE_SECONDS = 120.0
_READ_SIZE = 64 * 1024
SCHEME_NOT_ALLOWED = "scheme_not_allowed"
TOO_LARGE = "too_large"
NOT_FOUND = "not_found"
DOWNLOAD_FAILED = "download_failed"


@dataclass(frozen=True)
class Fetched:
    size: int
    sha256: str
    content_type: str | None  # what the server said, without parameters


@dataclass(frozen=True)
class FetchFailed:
    reason: str  # scheme_not_allowed | too_large | not_found | download_failed: …


def parse_attachments(value: object) -> tuple[FileToSend, ...] | str:
    """`attachments: [{url, filename?, mime_type?}]` as files to send, or why the field is
    malformed. The URL's scheme is judged when the file is fetched, so a refused file is reported
    on its own (message_failed, scheme_not_allowed) while the rest of the command still goes."""
    if value is None:
        return ()
    if not isinstance(value, list):
        return "attachments must be a list of {url, filename?, mime_type?}"
    if len(value) > MAX_FILES:
        return f"at most {MAX_FILES} attachments"
    found = []
    for index, item in enumerate(value):
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str) or not url.strip() or len(url) > MAX_URL_CHARS:
            return f"attachments[{index}] needs a url (at most {MAX_URL_CHARS} characters)"
        name, mime = item.get("filename"), item.get("mime_type")
        found.append(
            FileToSend(
                clean_text(url.strip()),
                clean_text(name)[:MAX_FILENAME_CHARS] if isinstance(name, str) else None,
                clean_text(mime)[:100] if isinstance(mime, str) else None,
            )
        )
    return tuple(found)


def url_problem(url: str, loopback: bool = True) -> str | None:
    """Why this URL may not be fetched at all (`scheme_not_allowed: …`), or None. `loopback`:
    whether a loopback host may be fetched at all (only while the backend is on loopback)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - a malformed port raises here, not later in requests
    except ValueError:
        return f"{SCHEME_NOT_ALLOWED}: not a URL"
    if not loopback and is_loopback(host):
        # The URL comes from the persona's answer, which a conversation can steer: with the
        # backend elsewhere, a loopback URL can only be a service on this Mac (the relay's own
        # /metrics, a dev server), and its answer would be sent into the chat.
        return f"{SCHEME_NOT_ALLOWED}: loopback is only fetched while the backend is on it"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and is_loopback(host):
        return None
    if parts.scheme == "http":
        return f"{SCHEME_NOT_ALLOWED}: plain http is only allowed to loopback"
    return f"{SCHEME_NOT_ALLOWED}: only https (or http to loopback) is fetched"


def as_sent(url: str) -> str:
    """The URL as requests will send it, so the checks below read the host it connects to.

    Python's urlsplit and urllib3 (under requests) disagree on some URLs: for
    `https://evil.example\\@backend.example/` urlsplit's host is the backend's (after the `@`)
    while urllib3 ends the host at the backslash and connects to evil.example, so the secret
    chosen by the first reading went to the second host. requests' own preparation writes the
    URL the way it reads it (here `https://evil.example/%5C@backend.example/`). A URL it cannot
    prepare is returned as it is: url_problem refuses it, and nothing is opened."""
    try:
        prepared = requests.Request("GET", url).prepare().url
    except (requests.exceptions.RequestException, ValueError):
        return url
    return prepared or url


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in; None for a URL without a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    default = {"https": 443, "http": 80}.get(parts.scheme, 0)
    return parts.scheme, parts.hostname.lower(), port or default


def fetch(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    headers_for: Callable[[str], dict[str, str]],
    max_bytes: int,
    connect_timeout: float,
    loopback: bool,
    deadline_seconds: float = FETCH_DEADLINE_SECONDS,
) -> Fetched | FetchFailed:
    """GET `url` into `dest` within the rules above. `headers_for(url)` gives the headers for
    each hop (the secret only for the backend's origin); `loopback`: whether the backend is on
    loopback (then, and only then, may a file come from there). On failure `dest` does not
    exist."""
    deadline = time.monotonic() + deadline_seconds
    try:
        # Every read ends by the deadline, the status line and headers included (see
        # transport): a read timeout alone bounds each wait, so headers trickled a byte at a
        # time held the fetch for as long as the server liked. `session` must come from
        # transport.new_session.
        with transport.deadline(deadline):
            outcome = _fetch(
                session, url, dest, headers_for, max_bytes, connect_timeout, loopback, deadline
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    if isinstance(outcome, FetchFailed):
        dest.unlink(missing_ok=True)
    return outcome


def _fetch(
    session: requests.Session,
    url: str,
    dest: Path,
    headers_for: Callable[[str], dict[str, str]],
    max_bytes: int,
    connect_timeout: float,
    loopback: bool,
    deadline: float,
) -> Fetched | FetchFailed:
    for _hop in range(MAX_REDIRECTS + 1):
        url = as_sent(url)
        problem = url_problem(url, loopback)
        if problem is not None:
            return FetchFailed(problem)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return FetchFailed(f"{DOWNLOAD_FAILED}: deadline passed")
        try:
            response = session.get(
                url,
                headers=headers_for(url),
                timeout=(min(connect_timeout, remaining), remaining),
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.Timeout:
            return FetchFailed(f"{DOWNLOAD_FAILED}: timeout")
        except requests.exceptions.SSLError:
            return FetchFailed(f"{DOWNLOAD_FAILED}: tls")
        except (requests.exceptions.RequestException, ValueError) as exc:
            # ValueError: requests reads a 3xx's Location even with redirects off (for
            # `response.next`), and urlsplit raises on a broken one (`http://[::1/x`).
            return FetchFailed(f"{DOWNLOAD_FAILED}: {type(exc).__name__}")
        try:
            status = response.status_code
            if status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    return FetchFailed(f"{DOWNLOAD_FAILED}: redirect without a Location")
                try:
                    url = urllib.parse.urljoin(url, location)
                except ValueError:  # a broken IPv6 literal: raised here, not in requests
                    return FetchFailed(f"{SCHEME_NOT_ALLOWED}: not a URL")
                continue
            if status in (404, 410):
                return FetchFailed(NOT_FOUND)
            if not 200 <= status < 300:
                return FetchFailed(f"{DOWNLOAD_FAILED}: http {status}")
            return _body(response, dest, max_bytes, deadline)
        finally:
            response.close()
    return FetchFailed(f"{DOWNLOAD_FAILED}: more than {MAX_REDIRECTS} redirects")


def _body(
    response: requests.Response, dest: Path, max_bytes: int, deadline: float
) -> Fetched | FetchFailed:
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        # We ask for identity: a compressed body could unpack past the cap (a zip bomb).
        return FetchFailed(f"{DOWNLOAD_FAILED}: compressed answer ({encoding[:20]})")
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        return FetchFailed(TOO_LARGE)
    digest = hashlib.sha256()
    size = 0
    try:
        with dest.open("xb") as out:
            while True:
                # read1: whatever one socket read brings, so the deadline is checked between
                # packets however slowly they trickle.
                chunk = response.raw.read1(_READ_SIZE, decode_content=False)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    return FetchFailed(TOO_LARGE)
                if time.monotonic() > deadline:
                    return FetchFailed(f"{DOWNLOAD_FAILED}: deadline passed")
                digest.update(chunk)
                out.write(chunk)
    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException):
        if time.monotonic() >= deadline:  # the transport's deadline cut the read
            return FetchFailed(f"{DOWNLOAD_FAILED}: deadline passed")
        return FetchFailed(f"{DOWNLOAD_FAILED}: connection broke off")
    except OSError as exc:
        return FetchFailed(f"{DOWNLOAD_FAILED}: {type(exc).__name__}")
    if declared.isdigit() and size != int(declared):
        return FetchFailed(f"{DOWNLOAD_FAILED}: connection broke off")
    content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return Fetched(size, digest.hexdigest(), content_type or None)
