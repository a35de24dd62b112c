"""Settings: one frozen value, built once from real environment > `.env` file > Keychain > default.

An invalid value raises `ConfigError` naming the variable and what it got. The secret is wrapped in
`Secret`, whose repr never shows it, so it cannot leak through a log line or a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from .errors import ConfigError
from .macos import keychain

DEFAULT_BACKEND_URL = "https://archety-backend-prod.up.railway.app"
DEFAULT_AGENT_ID = "mac-mini-primary"
DEFAULT_CHAT_DB = "~/Library/Messages/chat.db"
DEFAULT_STATE_DIR = "~/Library/Application Support/archety-relay"
DEFAULT_LOG_FILE = "~/Library/Logs/archety-relay/relay.log"
DEFAULT_ADDRESS_BOOK = "~/Library/Application Support/AddressBook"
# Outside 9100-9999, which the Prometheus wiki's exporter port list has fully handed out (so any
# pick there collides with some exporter), and away from the usual development ports.
DEFAULT_METRICS_PORT = 18520
SECRET_VARIABLE = "RELAY_WEBHOOK_SECRET"
KEYCHAIN_PROBLEM = "Keychain lookup: "

SECRET_HELP = f"""No webhook secret found. Set it one of three ways:
  1. In the Keychain (recommended on the Mac mini):
       archety-relay set-secret
     or: security add-generic-password -U -a {keychain.KEYCHAIN_ACCOUNT} \
-s {keychain.KEYCHAIN_SERVICE} -w
     (the relay reads it with /usr/bin/security, the tool that created the item)
  2. In a .env file (mode 0600) in the working directory or the state directory:
       {SECRET_VARIABLE}=<secret>
  3. In the environment: export {SECRET_VARIABLE}=<secret>"""


class Secret:
    """The webhook secret. Its repr and str never contain it; `reveal()` is the one way out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def last4(self) -> str:
        return self._value[-4:] if len(self._value) >= 12 else ""

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    backend_url: str
    secret: Secret
    secret_source: str  # "environment" | ".env" | "keychain"
    agent_id: str
    chat_db: Path
    state_dir: Path
    log_file: Path
    env_file: Path | None
    # Who the relay speaks for, carried on every message (the previous edge client sent them).
    persona_id: str | None = None
    persona_phone: str | None = None
    heartbeat_interval: float = 60.0
    sync_interval: float = 300.0
    max_message_age: float = 21600.0
    poll_interval: float = 1.0
    connect_timeout: float = 5.0
    read_timeout: float = 90.0
    max_backoff: float = 60.0
    auth_probe_interval: float = 60.0
    chat_join_wait: float = 5.0
    send_enabled: bool = True
    send_rate_per_chat: float = 3.0  # bubbles per second into one chat, at most
    photo_max_px: int = 1024  # long side of an uploaded picture
    photo_max_bytes: int = 5 * 1024 * 1024
    attachment_wait: float = 60.0  # a message waits this long for its pictures to download
    transcript_wait: float = 10.0  # a voice note waits this long for Apple's transcript
    contact_names: bool = True  # sender names from the Mac's Contacts (ARCHETY_CONTACT_NAMES)
    # Region a number typed without a country code is read in (else the persona's, else US).
    default_region: str | None = None
    address_book_dir: Path = field(default_factory=lambda: Path(DEFAULT_ADDRESS_BOOK).expanduser())
    send_file_max_bytes: int = 100 * 1024 * 1024  # a file the persona sends (iMessage's limit)
    max_in_flight: int = 16  # chats whose message is at the backend at the same time
    poison_attempts: int = 8  # failures of one message, while others go through, before it
    #                           is moved to the dead letters
    metrics_port: int = DEFAULT_METRICS_PORT  # /metrics and /healthz on 127.0.0.1; 0: off
    silence_alert: float = 21600.0  # no incoming message this long → an alert; 0: never
    notes: tuple[str, ...] = field(default=())  # things worth a log line once logging is up

    def persona_fields(self) -> dict[str, str]:
        """`persona_id` / `persona_phone` for a message body, those that are set."""
        fields = {"persona_id": self.persona_id, "persona_phone": self.persona_phone}
        return {k: v for k, v in fields.items() if v}


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a Bearer token, or None. Never quotes the value: it names
    the position and the kind of the first bad character (a pasted curly quote is the usual one).
    HTTP sends header values as latin-1 and the backend compares bytes, so only printable ASCII
    is safe; anything else would fail on every request, deep inside the HTTP client."""
    for index, ch in enumerate(value, start=1):
        if not " " <= ch <= "~":
            kind = "a control character" if ord(ch) < 0x20 or ord(ch) == 0x7F else "not ASCII"
            return (
                f"character {index} of {len(value)} is {kind} (a curly quote, an accent or an "
                "invisible character, usually from copy-paste); only printable ASCII is accepted"
            )
    return None


def agent_environment(environ: Mapping[str, str], env_file: Path | None) -> dict[str, str]:
    """What the LaunchAgent must carry to read the settings this shell reads: every ARCHETY_*
    variable and EDGE_AGENT_ID set here, and the .env resolved here by its absolute path (the
    agent runs in the state directory, where `./.env` is another file or none). Never the
    secret: `launchctl print` shows a job's environment to anyone on the machine."""
    carried = {
        key: value
        for key, value in environ.items()
        if value
        and (key.startswith("ARCHETY_") or key == "EDGE_AGENT_ID")
        and "SECRET" not in key.upper()
    }
    carried.pop("ARCHETY_ENV_FILE", None)
    if env_file is not None:
        carried["ARCHETY_ENV_FILE"] = str(env_file.expanduser().absolute())
    return carried


def resolve_env_file(environ: Mapping[str, str], cwd: Path) -> Path | None:
    explicit = environ.get("ARCHETY_ENV_FILE")
    if explicit:
        return Path(explicit).expanduser()
    local = cwd / ".env"
    if local.is_file():
        return local
    state_dir = Path(environ.get("ARCHETY_STATE_DIR") or DEFAULT_STATE_DIR).expanduser()
    candidate = state_dir / ".env"
    return candidate if candidate.is_file() else None


def load(
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    keychain_lookup: Callable[[], keychain.Lookup] = keychain.get_secret,
    *,
    require_secret: bool = True,
) -> Settings:
    """Build Settings. Raises ConfigError (exit 2) with the variable's name on any bad value.

    `require_secret=False` is for commands that only read local state (status, logs): they
    skip the Keychain and get an empty Secret when none is configured.
    """
    environ = dict(os.environ if environ is None else environ)
    env_file = resolve_env_file(environ, cwd or Path.cwd())
    notes: list[str] = []
    file_values: dict[str, str] = {}
    if env_file is not None:
        if not env_file.is_file():
            raise ConfigError(f"ARCHETY_ENV_FILE: {env_file} does not exist")
        try:
            file_values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        except OSError as exc:
            raise ConfigError(f"ARCHETY_ENV_FILE: {env_file} cannot be read: {exc}") from exc
        except UnicodeDecodeError as exc:  # its text would quote a byte of the file (the secret?)
            raise ConfigError(
                f"ARCHETY_ENV_FILE: {env_file} is not UTF-8 text (byte {exc.start}); "
                "save it as plain UTF-8"
            ) from None
        if env_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            notes.append(f"env_file_not_private:{env_file}")

    def get(name: str) -> str | None:
        value = environ.get(name)
        if value is None or value == "":
            value = file_values.get(name)
        return value if value not in (None, "") else None

    secret_value = get(SECRET_VARIABLE)
    if secret_value is not None:
        source = "environment" if environ.get(SECRET_VARIABLE) else ".env"
    elif not require_secret:
        secret_value, source = "", "none"
    else:
        found = keychain_lookup()
        if found.problem:
            notes.append(f"keychain_unavailable:{found.problem}")
        secret_value, source = found.value, "keychain"
    if not secret_value and require_secret:
        problem = next((n.partition(":")[2] for n in notes if n.startswith("keychain_")), "")
        raise ConfigError(SECRET_HELP + (f"\n{KEYCHAIN_PROBLEM}{problem}" if problem else ""))
    secret_value = (secret_value or "").strip()
    unusable = secret_problem(secret_value)
    if unusable is not None:
        if require_secret:
            raise ConfigError(f"{SECRET_VARIABLE} (from {source}): {unusable}. Enter it again.")
        # Commands that only read local state still work; the secret is not used there.
        notes.append(f"secret_unusable:{SECRET_VARIABLE} from {source}: {unusable}")
        secret_value = ""

    backend_url = _backend_url(get("ARCHETY_BACKEND_URL") or DEFAULT_BACKEND_URL, get)
    return Settings(
        backend_url=backend_url,
        secret=Secret(secret_value),
        secret_source=source,
        agent_id=_agent_id(get("EDGE_AGENT_ID") or DEFAULT_AGENT_ID),
        chat_db=Path(get("ARCHETY_CHAT_DB") or DEFAULT_CHAT_DB).expanduser(),
        state_dir=_directory(get, "ARCHETY_STATE_DIR", DEFAULT_STATE_DIR),
        log_file=Path(get("ARCHETY_LOG_FILE") or DEFAULT_LOG_FILE).expanduser(),
        env_file=env_file,
        persona_id=(get("ARCHETY_PERSONA_ID") or "").strip() or None,
        persona_phone=(get("ARCHETY_PERSONA_PHONE") or "").strip() or None,
        heartbeat_interval=_seconds(get, "ARCHETY_HEARTBEAT_INTERVAL", 60.0, low=1.0),
        sync_interval=_seconds(get, "ARCHETY_SYNC_INTERVAL", 300.0, low=1.0),
        max_message_age=_seconds(get, "ARCHETY_MAX_MESSAGE_AGE", 21600.0, low=1.0),
        poll_interval=_seconds(get, "ARCHETY_POLL_INTERVAL", 1.0, low=0.05, high=60.0),
        connect_timeout=_seconds(get, "ARCHETY_CONNECT_TIMEOUT", 5.0, low=0.1, high=120.0),
        read_timeout=_seconds(get, "ARCHETY_READ_TIMEOUT", 90.0, low=0.1, high=600.0),
        max_backoff=_seconds(get, "ARCHETY_MAX_BACKOFF", 60.0, low=0.1, high=3600.0),
        auth_probe_interval=_seconds(get, "ARCHETY_AUTH_PROBE_INTERVAL", 60.0, low=0.1),
        chat_join_wait=_seconds(get, "ARCHETY_CHAT_JOIN_WAIT", 5.0, low=0.0, high=300.0),
        send_enabled=_flag(get, "ARCHETY_SEND_ENABLED", True),
        send_rate_per_chat=_seconds(get, "ARCHETY_SEND_RATE_PER_CHAT", 3.0, low=0.1, high=100.0),
        photo_max_px=_integer(get, "ARCHETY_PHOTO_MAX_PX", 1024, low=64, high=8000),
        photo_max_bytes=_integer(
            get, "ARCHETY_PHOTO_MAX_BYTES", 5 * 1024 * 1024, low=10_000, high=50 * 1024 * 1024
        ),
        attachment_wait=_seconds(get, "ARCHETY_ATTACHMENT_WAIT", 60.0, low=0.0, high=3600.0),
        transcript_wait=_seconds(get, "ARCHETY_TRANSCRIPT_WAIT", 10.0, low=0.0, high=600.0),
        contact_names=_flag(get, "ARCHETY_CONTACT_NAMES", True),
        default_region=_region(get("ARCHETY_DEFAULT_REGION")),
        address_book_dir=Path(get("ARCHETY_ADDRESS_BOOK_DIR") or DEFAULT_ADDRESS_BOOK).expanduser(),
        send_file_max_bytes=_integer(
            get, "ARCHETY_SEND_FILE_MAX_BYTES", 100 * 1024 * 1024, low=1024, high=2 * 1024**3
        ),
        max_in_flight=_integer(get, "ARCHETY_MAX_IN_FLIGHT", 16, low=1, high=64),
        poison_attempts=_integer(get, "ARCHETY_POISON_ATTEMPTS", 8, low=1, high=1000),
        metrics_port=_integer(get, "ARCHETY_METRICS_PORT", DEFAULT_METRICS_PORT, low=0, high=65535),
        silence_alert=_duration(get, "ARCHETY_SILENCE_ALERT", 21600.0),
        notes=tuple(notes),
    )


def _region(raw: str | None) -> str | None:
    """A two-letter region code (`GB`, `de`), or None when unset."""
    value = (raw or "").strip().upper()
    if not value:
        return None
    if len(value) != 2 or not value.isalpha() or not value.isascii():
        raise ConfigError(
            f"ARCHETY_DEFAULT_REGION must be a two-letter region code like US or GB, got {raw!r}"
        )
    return value


def _backend_url(raw: str, get: Callable[[str], str | None]) -> str:
    parts = urllib.parse.urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"ARCHETY_BACKEND_URL must be an http(s) URL with a host, got {raw!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            "ARCHETY_BACKEND_URL must not carry a query, fragment or credentials, "
            f"got {parts.scheme}://{parts.hostname}..."
        )
    insecure_ok = get("ARCHETY_ALLOW_INSECURE_HTTP") == "1"
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not insecure_ok:
        raise ConfigError(
            f"ARCHETY_BACKEND_URL is plain http to {parts.hostname}: the webhook secret "
            "would travel in clear text. Use https (or set ARCHETY_ALLOW_INSECURE_HTTP=1 "
            "if you really mean it)."
        )
    return raw.strip().rstrip("/")


def _directory(get: Callable[[str], str | None], name: str, default: str) -> Path:
    """A directory the relay creates when missing; something else at that path is refused here,
    by name, instead of as a traceback from the first mkdir."""
    path = Path(get(name) or default).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} must be a directory, but {path} is a file")
    return path


def _agent_id(raw: str) -> str:
    value = raw.strip()
    # It travels in headers (User-Agent, X-Edge-Agent-Id): printable ASCII only, or every
    # request would fail inside the HTTP client.
    if not value or not all("!" <= ch <= "~" for ch in value) or len(value) > 128:
        raise ConfigError(
            f"EDGE_AGENT_ID must be a short name of printable ASCII without spaces, got {raw!r}"
        )
    return value


def _flag(get: Callable[[str], str | None], name: str, default: bool) -> bool:
    raw = get(name)
    if raw is None:
        return default
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


def _seconds(
    get: Callable[[str], str | None],
    name: str,
    default: float,
    *,
    low: float,
    high: float | None = None,
) -> float:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value != value or value < low or (high is not None and value > high):
        bounds = f"at least {low:g}" + (f" and at most {high:g}" if high is not None else "")
        raise ConfigError(f"{name} must be {bounds} seconds, got {raw!r}")
    return value


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(get: Callable[[str], str | None], name: str, default: float) -> float:
    """Seconds, or a number with one unit (`90s`, `30m`, `6h`, `2d`); 0 means off."""
    raw = get(name)
    if raw is None:
        return default
    text = raw.strip().lower()
    unit = _UNITS.get(text[-1:], 0.0) if text else 0.0
    try:
        value = float(text[:-1] if unit else text) * (unit or 1.0)
    except ValueError:
        raise ConfigError(
            f"{name} must be seconds or a duration such as 6h, 30m or 2d (0: off), got {raw!r}"
        ) from None
    if value != value or value < 0 or (0 < value < 60) or value > 30 * 86400:
        raise ConfigError(f"{name} must be 0 (off) or between 1m and 30d, got {raw!r}")
    return value


def _integer(
    get: Callable[[str], str | None], name: str, default: int, *, low: int, high: int
) -> int:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {raw!r}")
    return value
