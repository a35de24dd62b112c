"""Settings: precedence, the secret's three homes, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import keyring
import pytest
from keyring_backends import FileKeyring, HangingKeyring, unstick

from archety_relay import config
from archety_relay.errors import ConfigError
from archety_relay.macos import keychain

BASE = {"HOME": "/nonexistent"}


def no_keychain() -> keychain.Lookup:
    return keychain.Lookup(None, None)


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    """With only a secret set, every other value is the documented default."""
    s = config.load({"RELAY_WEBHOOK_SECRET": "s" * 20}, cwd=tmp_path, keychain_lookup=no_keychain)
    assert s.backend_url == "https://archety-backend-prod.up.railway.app"
    assert s.agent_id == "mac-mini-primary"
    assert s.chat_db == Path("~/Library/Messages/chat.db").expanduser()
    assert s.state_dir == Path("~/Library/Application Support/archety-relay").expanduser()
    assert s.log_file == Path("~/Library/Logs/archety-relay/relay.log").expanduser()
    assert (s.heartbeat_interval, s.sync_interval, s.max_message_age) == (60, 300, 21600)
    # The orchestrator answers with an LLM's reply: a slow answer is not a failure.
    assert (s.connect_timeout, s.read_timeout, s.max_backoff) == (5, 90, 60)
    assert (s.max_in_flight, s.poison_attempts) == (16, 8)


def test_environment_beats_env_file_beats_keychain(tmp_path: Path) -> None:
    """Real environment > .env > Keychain, and the source of the secret is recorded."""
    (tmp_path / ".env").write_text("RELAY_WEBHOOK_SECRET=from-file\nEDGE_AGENT_ID=file-agent\n")
    keychain_has = lambda: keychain.Lookup("from-keychain", None)  # noqa: E731
    s = config.load({"EDGE_AGENT_ID": "env-agent"}, cwd=tmp_path, keychain_lookup=keychain_has)
    assert (s.secret.reveal(), s.secret_source, s.agent_id) == ("from-file", ".env", "env-agent")
    s = config.load(
        {"RELAY_WEBHOOK_SECRET": "from-env"}, cwd=tmp_path, keychain_lookup=keychain_has
    )
    assert (s.secret.reveal(), s.secret_source) == ("from-env", "environment")
    (tmp_path / ".env").unlink()
    s = config.load({}, cwd=tmp_path, keychain_lookup=keychain_has)
    assert (s.secret.reveal(), s.secret_source) == ("from-keychain", "keychain")


def test_env_file_in_state_dir_is_found(tmp_path: Path) -> None:
    """Without ./.env, <state dir>/.env is read (where launchd's working directory points)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / ".env").write_text("RELAY_WEBHOOK_SECRET=state-secret\n")
    s = config.load(
        {"ARCHETY_STATE_DIR": str(state)}, cwd=tmp_path / "..", keychain_lookup=no_keychain
    )
    assert s.secret.reveal() == "state-secret"


def test_world_readable_env_file_is_noted(tmp_path: Path) -> None:
    """A .env others can read still works, with a warning note for the log."""
    env_file = tmp_path / ".env"
    env_file.write_text("RELAY_WEBHOOK_SECRET=abc\n")
    env_file.chmod(0o644)
    s = config.load({}, cwd=tmp_path, keychain_lookup=no_keychain)
    assert any(n.startswith("env_file_not_private") for n in s.notes)


def test_missing_secret_shows_the_three_ways(tmp_path: Path) -> None:
    """No secret anywhere: ConfigError (exit 2) naming Keychain, .env and environment."""
    with pytest.raises(ConfigError) as err:
        config.load({}, cwd=tmp_path, keychain_lookup=no_keychain)
    assert err.value.exit_code == 2
    text = str(err.value)
    assert "security add-generic-password -U -a archety-relay" in text
    assert ".env" in text and "export RELAY_WEBHOOK_SECRET" in text


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("ARCHETY_BACKEND_URL", "ftp://x", "ARCHETY_BACKEND_URL"),
        ("ARCHETY_BACKEND_URL", "not a url", "ARCHETY_BACKEND_URL"),
        ("ARCHETY_BACKEND_URL", "http://backend.example.com", "clear text"),
        ("ARCHETY_HEARTBEAT_INTERVAL", "often", "ARCHETY_HEARTBEAT_INTERVAL"),
        ("ARCHETY_SYNC_INTERVAL", "-5", "ARCHETY_SYNC_INTERVAL"),
        ("ARCHETY_MAX_MESSAGE_AGE", "nan", "ARCHETY_MAX_MESSAGE_AGE"),
        ("EDGE_AGENT_ID", "has space", "EDGE_AGENT_ID"),
        ("ARCHETY_TRANSCRIPT_WAIT", "forever", "ARCHETY_TRANSCRIPT_WAIT"),
        ("ARCHETY_DEFAULT_REGION", "USA", "ARCHETY_DEFAULT_REGION"),
        ("ARCHETY_CONTACT_NAMES", "maybe", "ARCHETY_CONTACT_NAMES"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str, fragment: str) -> None:
    """Each malformed value is a ConfigError that names what is wrong."""
    with pytest.raises(ConfigError) as err:
        config.load(
            {"RELAY_WEBHOOK_SECRET": "x", name: value}, cwd=tmp_path, keychain_lookup=no_keychain
        )
    assert fragment in str(err.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"])
def test_plain_http_is_allowed_only_to_loopback(tmp_path: Path, url: str) -> None:
    """Loopback over http is fine (the demo, the tests); elsewhere it needs an explicit opt-in."""
    s = config.load(
        {"RELAY_WEBHOOK_SECRET": "x", "ARCHETY_BACKEND_URL": url},
        cwd=tmp_path,
        keychain_lookup=no_keychain,
    )
    assert s.backend_url == url
    opted = config.load(
        {
            "RELAY_WEBHOOK_SECRET": "x",
            "ARCHETY_BACKEND_URL": "http://10.0.0.5",
            "ARCHETY_ALLOW_INSECURE_HTTP": "1",
        },
        cwd=tmp_path,
        keychain_lookup=no_keychain,
    )
    assert opted.backend_url == "http://10.0.0.5"


def test_secret_repr_never_shows_the_value() -> None:
    """A Secret in a log line, an f-string or a traceback prints as stars."""
    secret = config.Secret("super-secret-value-1234")
    assert "super" not in repr(secret) and "super" not in f"{secret}"
    s_repr = repr(
        config.Settings(
            backend_url="https://x",
            secret=secret,
            secret_source="environment",
            agent_id="a",
            chat_db=Path("c"),
            state_dir=Path("s"),
            log_file=Path("l"),
            env_file=None,
        )
    )
    assert "super-secret" not in s_repr


@pytest.fixture
def restore_keyring() -> object:
    previous = keyring.get_keyring()
    yield previous
    keyring.set_keyring(previous)
    unstick()  # a HangingKeyring lookup would otherwise stay in flight for later tests


def test_keychain_lookup_through_a_real_keyring_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_keyring: object
) -> None:
    """The secret stored under service relay-webhook-secret / account archety-relay is found."""
    monkeypatch.setenv("TEST_KEYRING_FILE", str(tmp_path / "keyring.json"))
    keyring.set_keyring(FileKeyring())
    keychain.set_secret("kc-secret")
    s = config.load({}, cwd=tmp_path)
    assert (s.secret.reveal(), s.secret_source) == ("kc-secret", "keychain")


def test_a_hanging_keychain_is_not_a_hang(tmp_path: Path, restore_keyring: object) -> None:
    """A locked keychain waiting on a prompt times out; the secret is then simply not found."""
    keyring.set_keyring(HangingKeyring())
    found = keychain.get_secret(timeout=0.2)
    assert found.value is None and "did not answer" in (found.problem or "")


def test_no_keyring_backend_is_not_a_crash(tmp_path: Path, restore_keyring: object) -> None:
    """On Linux without a keyring, the lookup reports why and the config error follows."""
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())
    found = keychain.get_secret()
    assert found.value is None and found.problem
    with pytest.raises(ConfigError):
        config.load({}, cwd=tmp_path)
