"""The only user of the Keychain: `/usr/bin/security` on a Mac, `keyring` elsewhere.

On macOS keyring calls SecItemCopyMatching in-process with UI allowed: a locked keychain or an
access prompt nobody on a headless Mac mini will answer blocks that thread for good, and a
thread cannot be killed. So on darwin the secret is read by the `security` tool in a child
process with a deadline (killed when it passes), and stored through `security -i` with the
secret on stdin (never argv). The item's trusted app is then Apple's /usr/bin/security, which
stays the same across Python upgrades. Elsewhere (tests, Linux) keyring runs in a worker thread
with a deadline. Either way only one lookup is in flight at a time: a stuck one is not joined by
another on every auth probe (review #26). Failure is a reason string, never an exception; an
OSStatus the tool reports is translated to what it means.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import dataclass

from . import tool as apple_tool

KEYCHAIN_SERVICE = "relay-webhook-secret"
KEYCHAIN_ACCOUNT = "archety-relay"
LOOKUP_TIMEOUT_SECONDS = 3.0
STORE_TIMEOUT_SECONDS = 30.0
# `security find-generic-password` exits 44 for errSecItemNotFound.
EXIT_NOT_FOUND = 44
NOT_FOUND = -25300
# What the Security framework's status codes mean to an operator.
OSSTATUS = {
    -25300: "no such item in the keychain",
    -25308: "interaction not allowed (the login keychain is locked, or a prompt would be "
    "needed and this session cannot show one: keep the login keychain password equal to the "
    "account password, or use a .env (0600) in the state directory)",
    -128: "user canceled (someone clicked Deny on the access prompt)",
    -25293: "authorization failed (wrong keychain password)",
    -25307: "no default keychain (none for this session, e.g. over SSH)",
    -25291: "no keychain available",
}
_PHRASES = (
    ("could not be found", -25300),
    ("interaction is not allowed", -25308),
    ("canceled", -128),
    ("cancelled", -128),
    ("authorization/authentication", -25293),
    ("default keychain could not be found", -25307),
)
# `security -i` splits its command line on blanks and quotes: keep to values it passes intact.
_SAFE_FOR_SECURITY = re.compile(r"[!#-&(-\[\]-~]+")


@dataclass(frozen=True)
class Lookup:
    value: str | None
    problem: str | None  # why nothing was found, for the log; None when found or simply absent


def uses_security_tool(platform: str | None = None) -> bool:
    return (platform or sys.platform) == "darwin"


def osstatus_meaning(output: str) -> tuple[int | None, str]:
    """The OSStatus named in the security tool's message (by number or by wording), and what
    it means; (None, the message) when it names none."""
    numbers = [int(n) for n in re.findall(r"\(?(-\d{3,5})\)?", output)]
    code = next((n for n in numbers if n in OSSTATUS), None)
    if code is None:
        lowered = output.lower()
        code = next((c for phrase, c in _PHRASES if phrase in lowered), None)
    if code is None:
        return None, output.strip()[:200] or "unknown error"
    return code, f"{code} {OSSTATUS[code]}"


_in_flight = threading.Lock()
_keyring_worker: threading.Thread | None = None
BUSY = "a previous keychain lookup is still waiting (locked, or a prompt nobody answered)"


def get_secret(timeout: float = LOOKUP_TIMEOUT_SECONDS, *, platform: str | None = None) -> Lookup:
    # Another caller's lookup ends within its own deadline: wait for it rather than race it.
    if not _in_flight.acquire(timeout=timeout + 1.0):
        return Lookup(None, BUSY)
    try:
        if uses_security_tool(platform):
            return _security_lookup(timeout)
        return _keyring_lookup(timeout)
    finally:
        _in_flight.release()


def _security_lookup(timeout: float) -> Lookup:
    tool = apple_tool("security")
    if tool is None:
        return Lookup(None, "the security tool was not found")
    argv = [tool, "find-generic-password", "-s", KEYCHAIN_SERVICE, "-a", KEYCHAIN_ACCOUNT, "-w"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Lookup(None, f"keychain did not answer within {timeout:g}s (locked, or a prompt)")
    except OSError as exc:
        return Lookup(None, f"the security tool could not run: {exc.strerror or exc}")
    if done.returncode == 0:
        return Lookup(done.stdout.rstrip("\r\n") or None, None)
    code, meaning = osstatus_meaning(done.stderr or done.stdout)
    if done.returncode == EXIT_NOT_FOUND or code == NOT_FOUND:
        return Lookup(None, None)  # simply absent
    return Lookup(None, meaning)


def _keyring_lookup(timeout: float) -> Lookup:
    global _keyring_worker
    if _keyring_worker is not None and _keyring_worker.is_alive():
        return Lookup(None, BUSY)  # the last one is still stuck: do not add another
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
            code, meaning = osstatus_meaning(str(exc))
            box.append(Lookup(None, meaning if code is not None else type(exc).__name__))

    _keyring_worker = threading.Thread(target=worker, name="keychain-lookup", daemon=True)
    _keyring_worker.start()
    _keyring_worker.join(timeout)
    if not box:
        return Lookup(None, f"keychain did not answer within {timeout:g}s (locked, or a prompt)")
    return box[0]


def set_secret(
    value: str, timeout: float = STORE_TIMEOUT_SECONDS, *, platform: str | None = None
) -> str | None:
    """Store the secret where `get_secret` reads it. Returns why it could not, or None.
    The caller reads it back: a keyring can accept a value and keep nothing."""
    if uses_security_tool(platform):
        return _security_store(value, timeout)
    return _keyring_store(value, timeout)


def _security_store(value: str, timeout: float) -> str | None:
    tool = apple_tool("security")
    if tool is None:
        return "the security tool was not found"
    if not _SAFE_FOR_SECURITY.fullmatch(value):
        return "this secret has quotes, blanks or backslashes the security tool would mangle"
    command = f"add-generic-password -U -a {KEYCHAIN_ACCOUNT} -s {KEYCHAIN_SERVICE} -w {value}\n"
    try:
        done = subprocess.run(
            [tool, "-i"], input=command, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"keychain did not answer within {timeout:g}s (locked, or a prompt)"
    except OSError as exc:
        return f"the security tool could not run: {exc.strerror or exc}"
    output = (done.stderr or "").replace(value, "****")
    if done.returncode != 0 or "error" in output.lower():
        return f"the keychain refused it ({osstatus_meaning(output)[1]})"
    return None


def _keyring_store(value: str, timeout: float) -> str | None:
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
