"""The one error hierarchy of archety-relay.

    RelayError                      root; carries an exit code and a hint for the operator
    ├── ConfigError                 exit 2: a variable is missing or malformed
    ├── AuthRejected                exit 3: the backend answered 401/403 to our secret
    ├── BackendUnreachable          exit 4: no answer, or only 5xx/429, from the backend
    ├── ChatDbUnavailable           exit 5: chat.db is missing or cannot be read (Full Disk Access)
    └── StateError                  exit 6: our own state database cannot be written or read
        └── OutboxCorrupt           the outbox file is not a sound SQLite database

Expected HTTP outcomes (a 503, a 422) are values (`backend.HttpOutcome`), never exceptions;
these are for conditions that stop a command or that a loop must log and wait out.
Third-party exceptions (sqlite3, requests, keyring) are translated once, where they are raised,
with ``raise ... from exc``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_AUTH = 3
EXIT_BACKEND = 4
EXIT_CHATDB = 5
EXIT_STATE = 6


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(RelayError):
    exit_code = EXIT_CONFIG


class AuthRejected(RelayError):
    exit_code = EXIT_AUTH


class BackendUnreachable(RelayError):
    exit_code = EXIT_BACKEND


class ChatDbUnavailable(RelayError):
    exit_code = EXIT_CHATDB


class StateError(RelayError):
    exit_code = EXIT_STATE


class OutboxCorrupt(StateError):
    pass
