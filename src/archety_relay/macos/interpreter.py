"""Which binary macOS checks for Full Disk Access, and whether this Python is a good one.

TCC checks the image running in the process, not the file launchd was told to start. The
python.org and Homebrew Pythons are framework builds: `bin/python3.12` is a stub that execs
`…/Resources/Python.app/Contents/MacOS/Python`, so `realpath(sys.executable)` names the stub and
a grant to it has no effect; the grant goes to the enclosing `Python.app` (listed as "Python").
`_NSGetExecutablePath` names the image (LLVM's get_darwin_real_python does the same, because
"sys.executable reports the wrong thing more often than not"). Any script that interpreter runs
inherits the grant.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable

from . import is_macos

MIN_VERSION = (3, 10)
RECOMMENDED = "3.12 or 3.13 from python.org"
PYTHON_ORG_HINT = (
    "install Python 3.12 or 3.13 with the python.org installer, then recreate the venv with it: "
    "/usr/local/bin/python3.12 -m venv .venv && .venv/bin/pip install -e ."
)


def _ns_get_executable_path() -> str | None:
    """The running image's path from dyld (darwin only)."""
    libc = ctypes.CDLL(None)
    size = ctypes.c_uint32(0)
    libc._NSGetExecutablePath(None, ctypes.byref(size))
    buffer = ctypes.create_string_buffer(size.value + 1)
    if libc._NSGetExecutablePath(buffer, ctypes.byref(size)) != 0:
        return None
    return os.path.realpath(buffer.value.decode("utf-8", "replace"))


def running_image(
    *,
    platform: str | None = None,
    executable_path: Callable[[], str | None] = _ns_get_executable_path,
) -> str:
    """The binary this process is running (what TCC sees), resolved."""
    if is_macos(platform):
        try:
            found = executable_path()
        except (OSError, AttributeError):  # no dyld symbol: fall back to the interpreter
            found = None
        if found:
            return found
    return os.path.realpath(sys.executable)


def fda_target(image: str) -> str:
    """What to add in System Settings > Full Disk Access: the enclosing .app of an app-bundle
    image (a framework build's Python.app), else the binary itself."""
    marker = ".app/Contents/MacOS/"
    if marker in image:
        return image[: image.index(marker) + len(".app")]
    return image


def python_problem(version: tuple[int, int]) -> str | None:
    """Why this Python cannot run the relay, or None."""
    if version < MIN_VERSION:
        return (
            f"Python {version[0]}.{version[1]} is too old (the relay needs "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]}+; macOS's own python3 is 3.9)"
        )
    return None


def python_advice(image: str) -> str | None:
    """A Python that runs but whose macOS grants will not last, or None."""
    if "/CommandLineTools/" in image or "/Xcode.app/" in image:
        return "Apple's Command Line Tools Python: old, and replaced by Xcode updates"
    if "/Cellar/" in image or "/homebrew/" in image.lower():
        return (
            "a Homebrew Python: every `brew upgrade` gives it a new code identity, and Full Disk "
            "Access, Automation and Keychain grants silently stop applying"
        )
    if "/uv/python/" in image:
        return "a uv-managed Python: its path names the patch version; grants go with upgrades"
    return None


_SELF_TEST = (
    "import sys; import archety_relay.cli.main; "
    f"sys.exit(0 if sys.version_info[:2] >= {MIN_VERSION!r} else 3)"
)


def cannot_run_relay(python: str, timeout: float = 60.0) -> str | None:
    """Why the interpreter the LaunchAgent would start cannot run the relay, or None: it must
    exist, be new enough and import this package (a venv that was moved or deleted fails)."""
    try:
        done = subprocess.run(
            [python, "-c", _SELF_TEST], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot be started: {exc}"
    if done.returncode == 3:
        return f"{python} is older than Python {MIN_VERSION[0]}.{MIN_VERSION[1]}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"{python} cannot import archety_relay: {last}"
    return None


def real_interpreter() -> str:
    """What to grant Full Disk Access: the image this Python runs (for a framework build, the
    enclosing Python.app; `realpath(sys.executable)` would name the stub that execs it)."""
    return fda_target(running_image())
