"""Real keyring backends for tests, loaded through keyring's own PYTHON_KEYRING_BACKEND hook."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from keyring.backend import KeyringBackend


class FileKeyring(KeyringBackend):
    """Stores passwords in the JSON file named by $TEST_KEYRING_FILE."""

    priority = 1  # type: ignore[assignment]

    def _path(self) -> Path:
        return Path(os.environ["TEST_KEYRING_FILE"])

    def _load(self) -> dict[str, str]:
        path = self._path()
        return json.loads(path.read_text()) if path.exists() else {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}/{username}"] = password
        self._path().write_text(json.dumps(data))

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        data.pop(f"{service}/{username}", None)
        self._path().write_text(json.dumps(data))


class HangingKeyring(KeyringBackend):
    """A locked keychain waiting on a prompt nobody will answer."""

    priority = 1  # type: ignore[assignment]

    released = threading.Event()  # in-process tests let go of it when done

    def get_password(self, service: str, username: str) -> str | None:
        self.released.wait(3600)
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self.released.wait(3600)

    def delete_password(self, service: str, username: str) -> None:
        pass


def unstick() -> None:
    """Answer every HangingKeyring prompt in this process, so no lookup stays in flight."""
    HangingKeyring.released.set()
    for thread in threading.enumerate():
        if thread.name.startswith("keychain-"):
            thread.join(5)
    HangingKeyring.released.clear()
