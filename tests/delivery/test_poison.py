"""Poison from outside, one value at a time: whatever a backend answers, the message it answers is
recorded once (delivered or dead-lettered), the next one goes, and nothing raises out of a step.

Found by attacking the merged main after the 2026-11-28 review (see the report on issue #9).
"""

from __future__ import annotations

import json
import plistlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ALICE, run_cli

from archety_relay import config
from archety_relay.backend import rules
from archety_relay.chatdb.reader import ChatDb
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.errors import ConfigError
from archety_relay.pictures import rules as picture_rules
from archety_relay.policy import HttpOutcome
from archety_relay.relay import Relay
from archety_relay.store import open_store
from archety_relay.tools import logview

MSG = "/orchestrator/message"
SYNC = "/edge/sync"
# Deeper than Python's recursion limit, shorter than any size cap: json.loads raises
# RecursionError, which is not a ValueError.
DEEP = b"[" * 1900 + b"]" * 1900


@pytest.fixture
def relay(env: dict[str, str], tmp_path: Path) -> Iterator[Relay]:
    settings = config.load(environ=env, cwd=tmp_path)
    made = Relay(settings, ChatDb(settings.chat_db), open_store(settings.state_dir))
    yield made
    made.backend.close()
    made.chatdb.close()
    made.store.close()


def queue(relay: Relay, writer: MessagesWriter, *texts: str) -> None:
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    for text in texts:
        writer.message(text, sender=ALICE, chat=chat)
    relay.capture_step(time.time())


def drain(relay: Relay, steps: int = 6) -> list[str]:
    """Deliver until idle with moments far enough apart that no backoff is waited for."""
    kinds: list[str] = []
    for i in range(steps):
        kind = relay.deliver_step(time.monotonic() + 1000.0 * (i + 1)).kind
        kinds.append(kind)
        if kind == "idle":
            break
    return kinds


@pytest.mark.parametrize(
    ("status", "recorded"), [(200, "delivered"), (422, "dead_lettered")], ids=["2xx", "422"]
)
def test_an_answer_nested_too_deep_is_recorded_once(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    status: int,
    recorded: str,
) -> None:
    """A 2xx or 422 whose body is JSON nested 1,900 deep: the message is delivered (no reply) or
    dead-lettered on the first try, never posted again, and the next message goes."""
    queue(relay, writer, "one", "two")
    backend.script(MSG, Behaviour(status, body=DEEP))
    assert drain(relay) == [recorded, "delivered", "idle"]
    guids = [r.headers["Idempotency-Key"] for r in backend.requests_to(MSG)]
    assert len(guids) == len(set(guids)) == 2
    assert relay.store.outgoing_counts() == {}


def test_a_sync_answer_nested_too_deep_fails_only_that_sync(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """`/edge/sync` answering JSON nested 1,900 deep is a sync that carried nothing: the step
    returns its outcome instead of raising, and the next sync works as usual."""
    backend.script(SYNC, Behaviour(200, body=DEEP))
    assert relay.sync_step(time.time()).status == 200
    backend.script(SYNC, Behaviour(200, body={"config_updates": {"sync_interval": 120}}))
    assert relay.sync_step(time.time()).status == 200
    assert relay.intervals["sync_interval"] == 120


def test_a_log_line_nested_too_deep_is_shown_as_a_foreign_line() -> None:
    """`logs` reads a line of JSON nested 1,900 deep as a line that is not an event (printed
    escaped) instead of crashing."""
    assert logview.parse(DEEP.decode()) is None


def test_a_damaged_row_in_the_recent_window_does_not_stop_edits_being_reported(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Recent rows damaged the way a foreign writer or a corrupt sync could leave them (unsent
    parts "²" and 5,000 digits that str.isdigit accepts and int() refuses, a TEXT
    `date_edited`, one in the year 33689, a TEXT `date_read` on the persona's message): the
    changes step does not
    raise, and the edit of another message is still reported."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    odd_part = writer.message("odd part", sender=ALICE, chat=chat)
    odd_date = writer.message("odd date", sender=ALICE, chat=chat)
    far = writer.message("far future", sender=ALICE, chat=chat)
    own = writer.message("mine", sender=None, chat=chat, is_from_me=1)
    fine = writer.message("see you at 7", sender=ALICE, chat=chat)
    relay.capture_step(time.time())
    relay.changes_step(time.time())
    info = plistlib.dumps({"rp": ["²", "9" * 5000], "ep": [0]}, fmt=plistlib.FMT_BINARY)
    writer.conn.execute(
        "UPDATE message SET date_edited = 1, message_summary_info = ? WHERE ROWID = ?",
        (info, odd_part),
    )
    writer.conn.execute("UPDATE message SET date_edited = 'soon' WHERE ROWID = ?", (odd_date,))
    # Below 10**14 a date counts as seconds (old macOS): this one is in the year 33689.
    writer.conn.execute("UPDATE message SET date_edited = ? WHERE ROWID = ?", (10**12, far))
    writer.conn.execute("UPDATE message SET is_read = 1, date_read = 'x' WHERE ROWID = ?", (own,))
    writer.edit(fine, "see you at 8")
    relay.changes_step(time.time())
    relay.sync_step(time.time())
    sent = backend.requests_to(SYNC)[-1].body["events"]
    edits = [e for e in sent if e["event_type"] == "message_edited"]
    assert "see you at 8" in [e["details"]["text"] for e in edits]


@pytest.mark.parametrize(
    "guid_sql",
    [
        "CAST(X'FFFE' AS TEXT)",
        "'caf' || char(233) || '-' || char(8364)",
        "'g' || char(13, 10) || 'X-Injected: 1'",
    ],
    ids=["not_utf8", "not_latin1", "crlf"],
)
def test_a_message_guid_no_header_can_carry_is_delivered_and_the_queue_goes_on(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, guid_sql: str
) -> None:
    """A guid with bytes that are not UTF-8, characters outside latin-1, or CR LF: the message
    goes with an Idempotency-Key of printable ASCII (the same on a retry, no header injected)
    and its guid in the body, and the message behind it goes too."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    odd = writer.message("odd guid", sender=ALICE, chat=chat)
    writer.conn.execute(f"UPDATE message SET guid = {guid_sql} WHERE ROWID = ?", (odd,))
    writer.message("next", sender=ALICE, chat=chat)
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(503))
    assert drain(relay) == ["retry", "delivered", "delivered", "idle"]
    first, again, after = backend.requests_to(MSG)
    key = first.headers["Idempotency-Key"]
    assert key == again.headers["Idempotency-Key"] and key.isascii() and key.isprintable()
    assert "X-Injected" not in first.headers and " " not in key
    assert [r.body["text"] for r in (again, after)] == ["odd guid", "next"]
    assert again.body["message_guid"] != key


def test_an_agent_id_no_header_can_carry_is_refused_by_name(tmp_path: Path) -> None:
    """EDGE_AGENT_ID goes into every request's headers: one with a character outside printable
    ASCII is a ConfigError naming the variable, not a crash on every request."""
    with pytest.raises(ConfigError) as refused:
        config.load({"RELAY_WEBHOOK_SECRET": "s" * 20, "EDGE_AGENT_ID": "mini-™"}, tmp_path)
    assert "EDGE_AGENT_ID" in refused.value.message


def test_damaged_configuration_files_are_refused_by_name(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A .env that is not UTF-8 (saved by another editor) and a state directory that is a file:
    exit 2 naming what to fix, never a traceback, never a byte of the file."""
    env_file = tmp_path / "damaged.env"
    env_file.write_bytes(b"EDGE_AGENT_ID=mini\nRELAY_WEBHOOK_SECRET=abc\xff\xfedef0123456789\n")
    env_file.chmod(0o600)
    bad_env = {**env, "ARCHETY_ENV_FILE": str(env_file)}
    del bad_env["RELAY_WEBHOOK_SECRET"]
    state_file = tmp_path / "state-is-a-file"
    state_file.write_text("")
    for run_env, names in (
        (bad_env, (str(env_file), "not UTF-8")),
        ({**env, "ARCHETY_STATE_DIR": str(state_file)}, ("ARCHETY_STATE_DIR", "is a file")),
    ):
        for args in (["--once"], ["status"], ["doctor"]):
            result = run_cli(args, run_env, cwd=tmp_path)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            output = result.stdout + result.stderr
            assert "Traceback" not in output and "\\xff" not in output and "0xff" not in output
            assert all(name in output for name in names), (args, output)


def test_a_rule_pattern_too_costly_to_compile_is_refused_before_compiling() -> None:
    """Compiling a regular expression has no timeout: nested counted repeats, 19 characters of
    `(?:a{65535}){65535}`, take over 12 GB in 12 s (found attacking set_rule). A set_rule
    whose pattern would cost more than MAX_PATTERN_COST is refused with the reason, without
    compiling it; the patterns people write are accepted. (Only a pattern cheap enough to compile
    on the old code is parsed here, so this test cannot hurt the machine it fails on.)"""
    moderate = "(?:(?:a{100}){100}){100}"  # 0.5 s and ~100 MB to compile
    assert rules.pattern_cost("(?:a{65535}){65535}") > rules.MAX_PATTERN_COST
    for pattern in (moderate, "a{1000}{1000}"):
        refused = rules.parse(
            {
                "rule_type": "filter",
                "rule_config": {
                    "name": "hostile",
                    "conditions": [{"field": "content", "operator": "matches", "value": pattern}],
                },
            }
        )
        assert isinstance(refused, str) and "too large" in refused
    for fine in (r"\d{3}-\d{4}", ".{0,200}", "(?i)^(stop|unsubscribe)$", r"\p{Greek}{3}"):
        assert rules.pattern_cost(fine) <= rules.MAX_PATTERN_COST
        condition = {"field": "content", "operator": "matches", "value": fine}
        rule = rules.parse(
            {"rule_type": "filter", "rule_config": {"name": "ok", "conditions": [condition]}}
        )
        assert isinstance(rule, rules.Rule)


HUGE_INT = "9" * 5000  # past Python's 4,300-digit int-from-string limit


def test_one_integer_too_long_for_python_spoils_only_its_own_command(
    relay: Relay, backend: StubBackend
) -> None:
    """A sync answer where one command's message_id has 5,000 digits: that command fails with
    its reason and the command beside it still runs (json.loads refused the whole answer)."""
    body = (
        '{"commands": [{"command_id": "c-huge", "command_type": "cancel_message", '
        f'"params": {{"message_id": {HUGE_INT}}}}}, '
        '{"command_id": "c-list", "command_type": "list_scheduled", "params": {}}]}'
    )
    backend.script(SYNC, Behaviour(200, body=body.encode()))
    relay.sync_step(time.time())
    relay.sync_step(time.time())
    events = backend.requests_to(SYNC)[-1].body["events"]
    outcome = {e["command_id"]: e["event_type"] for e in events}
    assert outcome == {"c-huge": "command_failed", "c-list": "command_completed"}


def test_one_integer_too_long_for_python_does_not_lose_the_reply(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A 2xx reply carrying an unknown field with a 5,000-digit number: the reply beside it is
    still read and stored for sending."""
    queue(relay, writer, "hello")
    body = f'{{"should_respond": true, "reply_text": "hi back", "score": {HUGE_INT}}}'
    backend.script(MSG, Behaviour(200, body=body.encode()))
    assert drain(relay) == ["delivered", "idle"]
    assert relay.store.outgoing_counts() == {"pending": 1}


def test_a_photo_upload_answer_nested_too_deep_is_an_upload_without_id() -> None:
    """The backend accepted the picture but its answer is JSON nested 1,900 deep: the upload
    counts as done (no photo_id) instead of raising, so the picture is not uploaded again and
    again and its message is not held."""
    result = picture_rules.upload_result(HttpOutcome(200, body=DEEP.decode()))
    assert result == picture_rules.UploadResult(picture_rules.UPLOADED)


def test_one_event_with_a_long_text_does_not_make_every_sync_fail(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """An incoming message edited into 2 MB of text becomes a `message_edited` event carrying
    that text. A backend (or the proxy before it) that answers 413 to bodies over 1 MB must
    not see every sync fail because of it: commands would never arrive. The sync goes through
    with the event's text shortened, and the command it brings back runs."""
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    rowid = writer.message("short", sender=ALICE, chat=chat)
    relay.capture_step(time.time())
    relay.changes_step(time.time())
    writer.edit(rowid, "y" * 2_000_000)
    relay.changes_step(time.time())

    def answer(body: object) -> Behaviour:
        if len(json.dumps(body)) > 1_000_000:
            return Behaviour(413, body={"detail": "Request Entity Too Large"})
        return Behaviour(
            200, body={"commands": [{"command_id": "c1", "command_type": "list_scheduled"}]}
        )

    backend.respond_with(SYNC, answer)
    for _ in range(3):
        relay.sync_step(time.time())
    statuses = [r.status for r in backend.requests_to(SYNC)]
    assert 200 in statuses, statuses
    sent = [e for r in backend.requests_to(SYNC) for e in r.body["events"]]
    edited = [e for e in sent if e["event_type"] == "message_edited"]
    assert edited and all(len(e["details"]["text"]) < 100_000 for e in edited)
    assert "c1" in {e.get("command_id") for e in sent if e["event_type"] == "command_completed"}


def test_one_value_nested_too_deep_spoils_only_its_own_command(
    relay: Relay, backend: StubBackend
) -> None:
    """A sync answer where one command's plan_data is nested 990 deep (the answer as a whole
    past the parser's stack): that command fails, the command beside it still runs."""
    deep = "[" * 990 + "]" * 990
    body = (
        '{"commands": [{"command_id": "c-deep", "command_type": "update_plan", "params": '
        f'{{"thread_id": "iMessage;-;{ALICE}", "plan_data": {deep}}}}}, '
        '{"command_id": "c-list", "command_type": "list_scheduled", "params": {}}]}'
    )
    backend.script(SYNC, Behaviour(200, body=body.encode()))
    relay.sync_step(time.time())
    relay.sync_step(time.time())
    events = backend.requests_to(SYNC)[-1].body["events"]
    outcome = {e["command_id"]: e["event_type"] for e in events}
    assert outcome == {"c-deep": "command_failed", "c-list": "command_completed"}
