"""The Keychain cannot wedge the relay, and set-secret stores what the daemon will read
(issue #12.7, review #17, #26).

On darwin the secret goes through Apple's `security` tool in a child process; here a fake
`security` first on PATH plays it (a file-backed keychain, a locked one, one that hangs), and the
darwin path is chosen through the module's platform switch. Elsewhere keyring runs with real
backends loaded through PYTHON_KEYRING_BACKEND.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import keyring
import pytest
from conftest import run_cli, write_env_file
from keyring_backends import HangingKeyring, unstick

from archety_relay.macos import keychain

TESTS = str(Path(__file__).parents[1])

FAKE_SECURITY = '''#!{python}
"""Stands in for /usr/bin/security: a keychain in a JSON file, or a locked/hanging one."""
import json, os, shlex, sys, time
state = os.environ["FAKE_SECURITY_DIR"]
with open(os.path.join(state, "argv.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
with open(os.path.join(state, "pid"), "w") as f:
    f.write(str(os.getpid()))
mode = os.environ.get("FAKE_SECURITY_MODE", "ok")
if mode == "hang":
    time.sleep(60)
if mode == "locked":
    sys.stderr.write("security: SecKeychainSearchCopyNext: User interaction is not allowed.\\n")
    sys.exit(36)
if mode == "denied":
    sys.stderr.write("security: SecKeychainItemCopyContent: user canceled (-128)\\n")
    sys.exit(1)
store = os.path.join(state, "keychain.json")
items = json.load(open(store)) if os.path.exists(store) else {}
args = sys.argv[1:]
if args == ["-i"]:
    args = shlex.split(sys.stdin.readline())
def opt(flag):
    return args[args.index(flag) + 1]
if args[0] == "add-generic-password":
    items[opt("-s") + "/" + opt("-a")] = opt("-w")
    json.dump(items, open(store, "w"))
elif args[0] == "find-generic-password":
    key = opt("-s") + "/" + opt("-a")
    if key not in items:
        sys.stderr.write("security: SecKeychainSearchCopyNext: The specified item could not be "
                         "found in the keychain.\\n")
        sys.exit(44)
    print(items[key])
'''


@pytest.fixture
def security(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `security` first on PATH; returns the directory holding its state."""
    bin_dir = tmp_path / "securitybin"
    bin_dir.mkdir()
    tool = bin_dir / "security"
    tool.write_text(FAKE_SECURITY.replace("{python}", sys.executable))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SECURITY_DIR", str(bin_dir))
    return bin_dir


def _argv(security: Path) -> list[list[str]]:
    return [json.loads(line) for line in (security / "argv.jsonl").read_text().splitlines()]


def test_on_darwin_the_secret_goes_through_the_security_tool_never_argv(security: Path) -> None:
    """Stored with `security -i` (the secret on stdin), read with find-generic-password -w;
    absent is simply absent, not a problem."""
    assert keychain.get_secret(platform="darwin") == keychain.Lookup(None, None)
    assert keychain.set_secret("0123456789abcdef", platform="darwin") is None
    assert keychain.get_secret(platform="darwin") == keychain.Lookup("0123456789abcdef", None)
    assert all("0123456789abcdef" not in arg for argv in _argv(security) for arg in argv)
    assert ["-i"] in _argv(security)


def test_a_hanging_security_tool_is_killed_at_the_deadline(
    security: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keychain waiting on a prompt nobody answers: the lookup gives up at its deadline and
    the child is gone (no stuck thread or process left behind for the next probe to join)."""
    monkeypatch.setenv("FAKE_SECURITY_MODE", "hang")
    found = keychain.get_secret(timeout=0.5, platform="darwin")
    assert found.value is None and "did not answer within 0.5s" in (found.problem or "")
    pid = int((security / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert keychain.get_secret(timeout=0.5, platform="darwin").problem != keychain.BUSY


@pytest.mark.parametrize(
    ("mode", "meaning"),
    [("locked", "-25308 interaction not allowed"), ("denied", "-128 user canceled")],
)
def test_keychain_errors_say_what_they_mean(
    security: Path, monkeypatch: pytest.MonkeyPatch, mode: str, meaning: str
) -> None:
    """A locked keychain and a denied prompt are reported by OSStatus and meaning, not as a
    bare exception name."""
    monkeypatch.setenv("FAKE_SECURITY_MODE", mode)
    found = keychain.get_secret(platform="darwin")
    assert found.value is None and (found.problem or "").startswith(meaning)


def test_a_stuck_keyring_lookup_is_not_joined_by_another_on_every_probe() -> None:
    """keyring elsewhere: while one lookup is stuck, later ones return at once saying so, and
    no further thread is started (review #26: one more per auth probe, forever)."""
    previous = keyring.get_keyring()
    keyring.set_keyring(HangingKeyring())
    try:

        def stuck() -> int:
            return sum(t.name == "keychain-lookup" for t in threading.enumerate())

        keychain.get_secret(timeout=0.1, platform="linux")
        before = stuck()
        for _ in range(3):
            found = keychain.get_secret(timeout=0.1, platform="linux")
            assert found.value is None and found.problem == keychain.BUSY
        assert stuck() == before
    finally:
        keyring.set_keyring(previous)
        unstick()


def test_set_secret_with_a_keyring_that_keeps_nothing_falls_back_to_env(
    env: dict[str, str], tmp_path: Path, secret: str
) -> None:
    """A keyring that accepts and forgets (review #17): set-secret reads back what the daemon
    will read, finds nothing, writes <state dir>/.env (0600) instead and says so; the daemon
    then finds the secret there."""
    no_env_secret = {k: v for k, v in env.items() if k != "RELAY_WEBHOOK_SECRET"}
    kenv = {**no_env_secret, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    result = run_cli(["set-secret", "--no-verify"], kenv, cwd=tmp_path, input=secret + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stored in the Keychain" not in result.stdout
    assert "would not read it back from the Keychain" in result.stdout
    env_file = Path(env["ARCHETY_STATE_DIR"]) / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert secret not in result.stdout + result.stderr
    once = run_cli(["--once"], kenv, cwd=Path(env["ARCHETY_STATE_DIR"]))
    assert once.returncode == 0, once.stdout + once.stderr


def test_set_secret_updates_an_env_file_the_agent_reads_before_the_keychain(
    env: dict[str, str], tmp_path: Path, secret: str
) -> None:
    """An old secret in <state dir>/.env would win over the new one in the Keychain: set-secret
    notices on read-back and updates the .env too, so the daemon gets the new secret."""
    state = Path(env["ARCHETY_STATE_DIR"])
    state.mkdir(parents=True)
    old = write_env_file(state / ".env", "0" * 32)
    kenv = {
        **{k: v for k, v in env.items() if k != "RELAY_WEBHOOK_SECRET"},
        "PYTHON_KEYRING_BACKEND": "keyring_backends.FileKeyring",
        "TEST_KEYRING_FILE": str(tmp_path / "keyring.json"),
        "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
    }
    result = run_cli(["set-secret", "--no-verify"], kenv, cwd=tmp_path, input=secret + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stored in the Keychain" in result.stdout and "updated there too" in result.stdout
    assert json.loads((tmp_path / "keyring.json").read_text()) == {
        "relay-webhook-secret/archety-relay": secret
    }
    assert f"RELAY_WEBHOOK_SECRET={secret}" in old.read_text()
    once = run_cli(["--once"], kenv, cwd=state)
    assert once.returncode == 0, once.stdout + once.stderr
