"""Pure decisions: what an HTTP outcome means, how long to wait, what a log line may show."""

from __future__ import annotations

import plistlib
import random
from pathlib import Path

import pytest
from conftest import SHARED_FIXTURES

from archety_relay.demo.messages_writer import schema_sql
from archety_relay.macos import launchd
from archety_relay.policy import HttpOutcome, Verdict, backoff_seconds, verdict
from archety_relay.redact import Redactor

REPO = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Verdict.DELIVERED),
        (202, Verdict.DELIVERED),
        (None, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (429, Verdict.RETRY),
        (301, Verdict.RETRY),
        (307, Verdict.RETRY),
        (401, Verdict.AUTH_PAUSED),
        (403, Verdict.AUTH_PAUSED),
        (400, Verdict.DEAD_LETTER),
        (404, Verdict.DEAD_LETTER),
        (422, Verdict.DEAD_LETTER),
    ],
)
def test_each_status_class_has_one_meaning(status: int | None, expected: Verdict) -> None:
    """The status table of the contract, row by row."""
    assert verdict(HttpOutcome(status=status)) is expected


def test_backoff_grows_is_jittered_and_capped() -> None:
    """Waits double per failure within jitter, never exceed the cap, never go below half a step."""
    rng = random.Random(1)
    waits = [backoff_seconds(n, None, cap=60, rng=rng) for n in range(1, 12)]
    assert 0.25 <= waits[0] <= 0.5
    assert all(w <= 60 for w in waits)
    assert waits[-1] >= 30
    assert len({round(w, 6) for w in waits}) == len(waits)


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    """The backend's Retry-After wins over a shorter backoff, bounded at an hour."""
    assert backoff_seconds(1, 120.0, cap=60) == 120.0
    assert backoff_seconds(1, 10**6, cap=60) == 3600.0


def test_redactor_masks_numbers_removes_text_and_secrets() -> None:
    """Phone numbers masked, e-mails shortened, secret and Bearer tokens gone, text dropped."""
    redact = Redactor(["s3cr3t-value-abc"])
    event = redact(
        None,
        "info",
        {
            "event": "x",
            "level": "info",
            "sender": "+15551234567",
            "text": "hello",
            "chat_guid": "iMessage;-;bob@example.com",
            "error": "Bearer s3cr3t-value-abc rejected",
            "nested": {"who": ["+447700900123"]},
            "message_guid": "1234567890-AB",
        },
    )
    assert event["sender"] == "+1555***4567"
    assert "text" not in event
    assert event["chat_guid"] == "iMessage;-;b***@example.com"
    assert "s3cr3t" not in event["error"] and "[REDACTED]" in event["error"]
    assert event["nested"] == {"who": ["+4477***0123"]}
    assert event["message_guid"] == "1234567890-AB"
    debug = redact(None, "debug", {"event": "x", "level": "debug", "text": "kept at debug"})
    assert debug["text"] == "kept at debug"


def test_repo_plist_is_valid_and_carries_no_secret() -> None:
    """launchd/com.archety.relay.plist parses, is a user agent that restarts only on failure."""
    raw = (REPO / "launchd" / "com.archety.relay.plist").read_bytes()
    plist = plistlib.loads(raw)
    assert plist["Label"] == "com.archety.relay"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] >= 10
    assert plist["ProgramArguments"][0].endswith(".app/Contents/MacOS/archety-relay")
    assert plist["ProgramArguments"][2:] == ["-m", "archety_relay", "run"]
    assert all(Path(plist[k]).is_absolute() for k in ("StandardOutPath", "StandardErrorPath"))
    assert b"SECRET" not in raw.upper()
    rendered = launchd.agent_plist(
        "/x/python", Path("/s"), Path("/l"), {"PATH": "/usr/bin"}, "/A.app", "com.archety.relay"
    )
    assert set(rendered) == set(plist)


def test_plist_refuses_a_secret_in_its_environment() -> None:
    """`launchctl print` shows a job's environment; the renderer will not put a secret there."""
    with pytest.raises(ValueError):
        launchd.agent_plist("/x/python", Path("/s"), Path("/l"), {"RELAY_WEBHOOK_SECRET": "x"})


def test_launchctl_command_lines() -> None:
    """Re-install is enable, bootout, print (wait until gone), bootstrap into the user's GUI
    domain, print (confirm a pid); never kickstart -k, which would kill the new instance."""
    assert launchd.install_commands(501, Path("/Users/a/Library/LaunchAgents/x.plist")) == [
        ["launchctl", "enable", "gui/501/com.archety.relay"],
        ["launchctl", "bootout", "gui/501/com.archety.relay"],
        ["launchctl", "print", "gui/501/com.archety.relay"],
        ["launchctl", "bootstrap", "gui/501", "/Users/a/Library/LaunchAgents/x.plist"],
        ["launchctl", "print", "gui/501/com.archety.relay"],
    ]


@pytest.mark.skipif(
    not (SHARED_FIXTURES / "chatdb_schema.sql").exists(), reason="../shared/fixtures not present"
)
def test_shipped_schema_is_apples_schema_unchanged() -> None:
    """The demo's copy of chat.db's schema is exactly the one dumped from macOS."""
    assert schema_sql() == (SHARED_FIXTURES / "chatdb_schema.sql").read_text()


def test_global_flags_work_before_or_after_the_subcommand() -> None:
    """`archety-relay -v run` and `archety-relay run -v` mean the same."""
    from archety_relay.cli.main import build_parser

    parser = build_parser()
    for argv in (["-v", "run"], ["run", "-v"]):
        assert getattr(parser.parse_args(argv), "verbose", False) is True
    assert getattr(parser.parse_args(["run"]), "verbose", False) is False
    for argv in (["--log-format", "json", "status"], ["status", "--log-format", "json"]):
        assert getattr(parser.parse_args(argv), "log_format", None) == "json"
