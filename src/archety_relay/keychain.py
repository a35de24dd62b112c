"""The only user of `keyring` (the macOS Keychain on a Mac).

A lookup can hang (a locked keychain, an access prompt nobody on a headless Mac mini will answer)
or fail (no backend on Linux), so it runs in a worker thread with a deadline; any failure means
"not found there", reported as a reason string rather than an exception.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

KEYCHAIN_SERVICE = "relay-webhook-secret"
KEYCHAIN_ACCOUNT = "archety-relay"
LOOKUP_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Lookup:
    value: str | None
    problem: str | None  # why nothing was found, for the log; None when found or simply absent


def get_secret(timeout: float = LOOKUP_TIMEOUT_SECONDS) -> Lookup:
    box: list[Lookup] = []

    def worker() -> None:
        try:
            import keyring
            import keyring.errors

            try:
                value = keyring.get_password(KEYCHAIN_SERVICE, KEYCHAIN_ACCOUNT)
            except keyring.errors.NoKeyringError:
                box.append(Lookup(None, "no keyring backend on this machine"))
                return
            box.append(Lookup(value or None, None))
        except Exception as exc:  # any backend failure means "not found here"
            box.append(Lookup(None, f"{type(exc).__name__}"))

    thread = threading.Thread(target=worker, name="keychain-lookup", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        return Lookup(None, f"keychain did not answer within {timeout:g}s (locked, or a prompt)")
    return box[0]


def set_secret(value: str, timeout: float = 30.0) -> str | None:
    """Store the secret where `get_secret` reads it. Returns why it could not, or None."""
    problems: list[str] = []

    def worker() -> None:
        try:
            import keyring
            import keyring.errors

            try:
                keyring.set_password(KEYCHAIN_SERVICE, KEYCHAIN_ACCOUNT, value)
            except keyring.errors.NoKeyringError:
                problems.append("no keyring backend on this machine")
                return
            problems.append("")
        except Exception as exc:  # a backend failure is reported, never raised
            problems.append(f"the keyring refused it ({type(exc).__name__})")

    thread = threading.Thread(target=worker, name="keychain-store", daemon=True)
    thread.start()
    thread.join(timeout)
    if not problems:
        return f"keychain did not answer within {timeout:g}s (locked, or a prompt)"
    return problems[0] or None
