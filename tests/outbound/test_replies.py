"""The persona talks back: reply shapes, sync commands, Messages.app via osascript, durability.

osascript is a fake first on PATH that records its argv (and, when asked, writes the sent
message into chat.db as Messages.app does); everything else is real.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog.testing
from conftest import (
    ALICE,
    BOB,
    FakeOsascript,
    RelayProcess,
    killable_relay,
    log_events,
    osascript_arguments,
    wait_until,
)

from archety_relay.backend import commands, replies
from archety_relay.chatdb.guids import Target, send_target
from archety_relay.config import Settings
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.macos import messages_app
from archety_relay.relay import Relay
from archety_relay.store import Store

MSG = "/orchestrator/message"
SYNC = "/edge/sync"
SCRIPT_ARGS = [arg for line in messages_app.SCRIPT for arg in ("-e", line)]
TRICKY = 'He said "hi" \\ then\nend tell\ndo shell script "rm -rf ~" 😀 & return'


def test_reply_shapes() -> None:
    """Each shape the backend has used becomes timed bubbles; anything else, nothing."""
    assert [
        (b.text, b.delay)
        for b in replies.plan('{"should_respond": true, "reply_text": "hey"}').bubbles
    ] == [("hey", 0)]
    two = replies.plan('{"should_respond": true, "reply_bubbles": ["a", "b"], "x": 1}')
    assert [b.text for b in two.bubbles] == ["a", "b"] and two.bubbles[1].delay > 0
    burst = replies.plan(
        json.dumps(
            {
                "should_respond": True,
                "reflex_message": "lol",
                "burst_messages": ["so", "anyway"],
                "burst_delay_ms": 2000,
            }
        )
    )
    assert [(b.text, b.delay) for b in burst.bubbles][:2] == [("lol", 0), ("so", 2.0)]
    assert burst.bubbles[2].delay > 2.0
    for body, reason in [
        ('{"should_respond": false, "reply_text": "x"}', "should_not_respond"),
        ('{"reply_text": "x"}', "should_not_respond"),
        ("<html>502</html>", "not_json"),
        ("", "not_json"),
        ('{"should_respond": true}', "nothing_to_say"),
    ]:
        assert replies.plan(body) == replies.ReplyPlan((), reason)


def test_command_parsing_and_interval_clamping() -> None:
    """Commands become typed actions; bad ones say why; intervals stay within sane ranges."""
    parsed = commands.parse_response(
        json.dumps(
            {
                "ack_events": ["e1"],
                "commands": [
                    {
                        "command_id": "c1",
                        "command_type": "send_message",
                        "params": {"thread_id": "iMessage;-;+1555", "text": "hi"},
                    },
                    {
                        "command_id": "c2",
                        "command_type": "schedule_message",
                        "params": {
                            "chat_guid": "iMessage;+;chat9",
                            "text": "later",
                            "send_at": "2030-01-01T09:00:00+02:00",
                        },
                    },
                    {
                        "command_id": "c3",
                        "command_type": "schedule_message",
                        "params": {
                            "chat_guid": "iMessage;+;chat9",
                            "text": "later",
                            "send_at": "2030-01-01T09:00:00",
                        },
                    },
                    {"command_id": "c4", "command_type": "self_destruct", "params": {}},
                    {
                        "command_id": "c5",
                        "command_type": "cancel_message",
                        "params": {"message_id": "7"},
                    },
                ],
                "config_updates": {"sync_interval": 1, "heartbeat_interval": 10**9},
            }
        )
    )
    a1, a2, a3, a4, a5 = parsed.actions
    assert a1 == commands.SendNow("c1", "iMessage;-;+1555", "hi")
    assert (
        isinstance(a2, commands.Schedule)
        and a2.send_at == datetime(2030, 1, 1, 7, tzinfo=timezone.utc).timestamp()
    )
    assert isinstance(a3, commands.Invalid) and "time zone" in a3.reason
    assert isinstance(a4, commands.Invalid) and "unknown command_type" in a4.reason
    assert a5 == commands.Cancel("c5", 7)
    assert parsed.ack_events == ("e1",)
    assert parsed.intervals == {"sync_interval": 10.0, "heartbeat_interval": 3600.0}


def test_text_is_an_argument_never_script_source() -> None:
    """The AppleScript is fixed; chat guid and text are argv after it, untouched."""
    target = send_target("iMessage;+;chat1", None)
    argv = messages_app.send_argv(target, TRICKY)
    assert argv == [
        "osascript",
        *SCRIPT_ARGS,
        "--",
        "iMessage;+;chat1",
        TRICKY,
        "",  # a group: no participant to fall back to
        "iMessage",
        "any;+;chat1",  # macOS 26's spelling of the same chat
    ]
    assert all(TRICKY not in line for line in messages_app.SCRIPT)


INJECTION = 'property p : (do shell script "id > /tmp/pwned")'


def test_no_argument_is_ever_read_as_an_osascript_option(
    relay: Relay, osascript: FakeOsascript
) -> None:
    """A chat guid such as "-e" from a sync command would make the text script source (review
    #7): the command is refused with a reason, the send path refuses it again, and osascript's
    own option parsing finds only our script lines even if such a guid got through."""
    refused = commands.to_action(
        {
            "command_id": "c9",
            "command_type": "send_message",
            "params": {"chat_guid": "-e", "text": INJECTION},
        }
    )
    assert isinstance(refused, commands.Invalid) and "chat_guid" in refused.reason
    for bad in ("-e", "-l", "iMessage;-;+1\x00", "chat1", "iMessage;x;+1", ""):
        result = messages_app.send(Target(bad, "", "", "iMessage"), INJECTION)
        assert (
            not result.ok and not result.retryable and "invalid_chat_guid" in (result.error or "")
        )
    assert osascript.calls() == []
    argv = messages_app.send_argv(Target("-e", "", "", "iMessage"), INJECTION)[1:]
    assert osascript_arguments(argv)[:2] == ["-e", INJECTION]  # arguments, not script


def test_a_nul_byte_fails_one_send_and_never_blocks_another_chat(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript
) -> None:
    """A NUL in a reply cannot go through argv (subprocess raises ValueError): that row fails at
    once with the reason, and another chat's message due at the same moment still goes out."""
    from archety_relay.backend.commands import SendNow

    relay.outbound.execute(SendNow("n1", f"iMessage;-;{ALICE}", "bad\x00reply"), 100.0)
    relay.outbound.execute(SendNow("n2", f"iMessage;-;{BOB}", "fine"), 100.0)
    relay.outbound.dispatch_step(100.0)
    assert osascript.sent() == [(f"iMessage;-;{BOB}", "fine")]
    (failed,) = [e for e in relay.store.pending_events() if e.event_type == "message_failed"]
    assert failed.payload["chat_guid"] == f"iMessage;-;{ALICE}"
    assert "NUL" in failed.payload["details"]["error"]
    assert relay.store.outgoing_counts() == {"failed": 1, "sent": 1}


def test_a_row_whose_send_raises_does_not_stop_the_other_chats(
    settings: Settings, store: Store, writer: MessagesWriter
) -> None:
    """Whatever goes wrong with one outgoing row (here the sender itself raises), the rest of the
    step still sends other chats' messages, and the failure is logged with the row's id."""
    from archety_relay.backend.commands import SendNow
    from archety_relay.chatdb.reader import ChatDb
    from archety_relay.outbound.dispatch import Outbound

    sent: list[str] = []

    def send(target: Target, text: str) -> messages_app.SendResult:
        if ALICE in target.chat_guid:
            raise RuntimeError("boom")
        sent.append(text)
        return messages_app.SendResult(True)

    with ChatDb(settings.chat_db) as chatdb, structlog.testing.capture_logs() as logged:
        outbound = Outbound(settings, store, chatdb, send=send)
        outbound.execute(SendNow("r1", f"iMessage;-;{ALICE}", "explodes"), 100.0)
        outbound.execute(SendNow("r2", f"iMessage;-;{BOB}", "goes"), 100.0)
        outbound.dispatch_step(100.0)
    assert sent == ["goes"]
    (failure,) = [e for e in logged if e["event"] == "send_step_failed"]
    assert failure["outgoing_id"] == 1 and failure["error"] == "boom"


@pytest.fixture
def replying(
    env: dict[str, str],
    osascript: FakeOsascript,
    writer: MessagesWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The relay's environment with the fake osascript, which records into chat.db too."""
    monkeypatch.setenv("FAKE_OSASCRIPT_CHATDB", str(writer.path))
    return {
        **env,
        **osascript.env,
        "FAKE_OSASCRIPT_CHATDB": str(writer.path),
        "ARCHETY_SYNC_INTERVAL": "1",
    }


def test_replies_go_to_the_chat_in_order_byte_for_byte(
    start_relay: Callable[..., RelayProcess],
    replying: dict[str, str],
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
) -> None:
    """reply_text, reply_bubbles and reflex+burst each reach osascript exactly, in order; a
    message the persona sent never comes back as incoming."""
    alice = writer.direct_chat(ALICE)
    group = writer.group_chat("chat77", [ALICE, BOB])
    # Chats are delivered side by side, so each answer is chosen by the message it answers.
    answers = {
        "tell me something": {"should_respond": True, "reply_text": TRICKY},
        "and in the group?": {"should_respond": True, "reply_bubbles": ["one", "two"]},
        "more": {
            "should_respond": True,
            "reflex_message": "ha",
            "burst_messages": ["wait", "what"],
            "burst_delay_ms": 300,
        },
        "quiet please": {"should_respond": False},
    }
    backend.respond_with(MSG, lambda body: Behaviour(body=answers[body["text"]]))
    relay = start_relay(replying)
    writer.message("tell me something", sender=ALICE, chat=alice)
    assert wait_until(lambda: len(osascript.calls()) == 1)
    writer.message("and in the group?", sender=BOB, chat=group)
    writer.message("more", sender=ALICE, chat=alice)
    writer.message("quiet please", sender=ALICE, chat=alice)
    assert wait_until(lambda: len(osascript.calls()) == 6, timeout=15)
    calls = osascript.calls()
    assert calls[0][: len(SCRIPT_ARGS) + 3] == [*SCRIPT_ARGS, "--", f"iMessage;-;{ALICE}", TRICKY]
    group_sent = [t for c, t in osascript.sent() if c == "iMessage;+;chat77"]
    assert group_sent == ["one", "two"]  # chats interleave freely; each keeps its own order
    per_chat = [t for c, t in osascript.sent() if c == f"iMessage;-;{ALICE}"]
    assert per_chat == [TRICKY, "ha", "wait", "what"]
    time.sleep(1.0)
    assert len(osascript.calls()) == 6  # "quiet please" got should_respond false
    texts = [r.body["text"] for r in backend.messages()]
    assert sorted(texts) == sorted(answers)
    assert [t for t in texts if t != "and in the group?"] == [
        "tell me something",
        "more",
        "quiet please",
    ]
    attempts = log_events(relay.log, "message_delivery_attempt")
    assert sorted(a["reply"] for a in attempts) == [
        "reflex_burst",
        "reply_bubbles",
        "reply_text",
        "should_not_respond",
    ]


def _sync_commands(
    backend: StubBackend,
    *cmds: dict[str, object],
    acks: list[str] | None = None,
    config: dict[str, object] | None = None,
) -> None:
    backend.script(
        SYNC,
        Behaviour(
            body={"ack_events": acks or [], "commands": list(cmds), "config_updates": config or {}}
        ),
    )


def _events(backend: StubBackend) -> list[dict[str, object]]:
    return [e for r in backend.requests_to(SYNC) for e in (r.body or {}).get("events", [])]


def test_commands_from_sync_are_executed_once_and_reported(
    start_relay: Callable[..., RelayProcess],
    replying: dict[str, str],
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
) -> None:
    """send/schedule/cancel/list/unknown, a repeated command id, events until acknowledged."""
    writer.direct_chat(ALICE)
    writer.direct_chat(BOB)
    soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    later = (datetime.now(timezone.utc) + timedelta(hours=5)).isoformat()
    send = {
        "command_id": "c-send",
        "command_type": "send_message",
        "params": {"chat_guid": f"iMessage;-;{ALICE}", "text": "good morning"},
    }
    _sync_commands(
        backend,
        send,
        {
            "command_id": "c-soon",
            "command_type": "schedule_message",
            "params": {"thread_id": f"iMessage;-;{BOB}", "text": "reminder", "send_at": soon},
        },
        {
            "command_id": "c-later",
            "command_type": "schedule_message",
            "params": {"chat_guid": f"iMessage;-;{BOB}", "text": "never", "send_at": later},
        },
        {"command_id": "c-what", "command_type": "make_coffee", "params": {}},
    )
    relay = start_relay(replying)
    assert wait_until(lambda: ("iMessage;-;" + ALICE, "good morning") in osascript.sent())
    first_events = wait_until(lambda: len(_events(backend)) >= 4, timeout=10)
    assert first_events
    by_command = {e["command_id"]: e for e in _events(backend)}
    later_id = by_command["c-later"]["message_ids"][0]  # type: ignore[index]
    _sync_commands(
        backend,
        send,  # the same command id again: not executed twice
        {
            "command_id": "c-cancel",
            "command_type": "cancel_message",
            "params": {"message_id": later_id},
        },
        {"command_id": "c-list", "command_type": "list_scheduled", "params": {}},
    )
    assert wait_until(lambda: (f"iMessage;-;{BOB}", "reminder") in osascript.sent(), timeout=10)
    assert wait_until(lambda: any(e["command_id"] == "c-list" for e in _events(backend)), 10)
    events = _events(backend)
    kinds = {(e["command_id"], e["event_type"]) for e in events}
    assert {
        ("c-send", "command_completed"),
        ("c-send", "message_sent"),
        ("c-soon", "message_sent"),
        ("c-later", "command_completed"),
        ("c-what", "command_failed"),
        ("c-cancel", "command_completed"),
        ("c-list", "command_completed"),
    } <= kinds
    listed = next(e for e in events if e["command_id"] == "c-list")["details"]["scheduled"]
    assert {(i["message_id"], i["status"]) for i in listed} >= {(later_id, "cancelled")}
    assert osascript.sent().count((f"iMessage;-;{ALICE}", "good morning")) == 1
    assert (f"iMessage;-;{BOB}", "never") not in osascript.sent()
    # acknowledge everything seen so far: later syncs no longer carry those events
    seen = [str(e["event_id"]) for e in events]
    syncs = len(backend.requests_to(SYNC))
    _sync_commands(backend, acks=seen)  # answered to the next sync; the one after shows it
    assert wait_until(lambda: len(backend.requests_to(SYNC)) >= syncs + 2, timeout=10)
    last = backend.requests_to(SYNC)[-1].body["events"]
    assert not {e["event_id"] for e in last} & set(seen)
    assert log_events(relay.log, "command_duplicate_ignored")


def test_schedule_survives_a_restart_and_a_long_outage_is_reported_missed(
    start_relay: Callable[..., RelayProcess],
    replying: dict[str, str],
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
) -> None:
    """A schedule stored before a restart goes out after it; one due over an hour ago is missed."""
    writer.direct_chat(ALICE)
    soon = (datetime.now(timezone.utc) + timedelta(seconds=3)).isoformat()
    long_ago = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    _sync_commands(
        backend,
        {
            "command_id": "s1",
            "command_type": "schedule_message",
            "params": {
                "chat_guid": f"iMessage;-;{ALICE}",
                "text": "after restart",
                "send_at": soon,
            },
        },
        {
            "command_id": "s2",
            "command_type": "schedule_message",
            "params": {"chat_guid": f"iMessage;-;{ALICE}", "text": "too late", "send_at": long_ago},
        },
    )
    first = start_relay(replying)
    assert wait_until(lambda: len(log_events(first.log, "command_accepted")) == 2)
    rc, _ = first.terminate()
    assert rc == 0 and osascript.sent() == []
    start_relay(replying)
    assert wait_until(lambda: osascript.sent() == [(f"iMessage;-;{ALICE}", "after restart")], 10)
    assert wait_until(
        lambda: any(
            e["event_type"] == "message_failed" and "missed" in e["details"]["error"]
            for e in _events(backend)
        ),
        10,
    )


@pytest.mark.parametrize("messages_wrote_it", [True, False])
def test_kill_9_mid_send_neither_loses_nor_doubles_the_reply(
    replying: dict[str, str],
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
    tmp_path: Path,
    messages_wrote_it: bool,
) -> None:
    """The relay and osascript die together mid-send. If Messages had recorded the message,
    the restarted relay sees it in chat.db and does not send again; if not, it sends once."""
    chat = writer.direct_chat(ALICE)
    backend.script(MSG, Behaviour(body={"should_respond": True, "reply_text": "only once"}))
    slow = {
        "FAKE_OSASCRIPT_SLEEP_AFTER" if messages_wrote_it else "FAKE_OSASCRIPT_SLEEP_BEFORE": "30"
    }
    log = Path(replying["ARCHETY_LOG_FILE"])
    proc = killable_relay({**replying, **slow}, tmp_path)
    try:
        assert wait_until(lambda: bool(log_events(log, "relay_ready")), 20)
        writer.message("say it once", sender=ALICE, chat=chat)
        assert wait_until(lambda: len(osascript.calls()) == 1, 15)
        if messages_wrote_it:
            assert wait_until(
                lambda: (
                    writer.conn.execute(
                        "SELECT COUNT(*) FROM message WHERE is_from_me = 1"
                    ).fetchone()[0]
                    == 1
                ),
                10,
            )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    restarted = killable_relay(replying, tmp_path)
    try:
        assert wait_until(lambda: len(log_events(log, "relay_ready")) == 2, 20)
        expected_calls = 1 if messages_wrote_it else 2
        assert wait_until(lambda: len(osascript.calls()) == expected_calls, 10)
        time.sleep(1.5)
        assert len(osascript.calls()) == expected_calls
        sent_rows = writer.conn.execute(
            "SELECT COUNT(*) FROM message WHERE is_from_me = 1 AND text = 'only once'"
        ).fetchone()[0]
        assert sent_rows == 1
        event = "send_recovered_as_sent" if messages_wrote_it else "send_recovered_for_retry"
        assert log_events(log, event)
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(10)


def test_one_chat_is_rate_limited_without_blocking_another(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript
) -> None:
    """Four sends to one chat are spaced by the per-chat rate; another chat's goes at once."""
    from archety_relay.backend.commands import SendNow

    for i in range(4):
        relay.outbound.execute(SendNow(f"a{i}", f"iMessage;-;{ALICE}", f"a{i}"), 100.0)
    relay.outbound.execute(SendNow("b0", f"iMessage;-;{BOB}", "b0"), 100.0)
    wait = relay.outbound.dispatch_step(100.0)
    assert sorted(osascript.sent()) == [(f"iMessage;-;{ALICE}", "a0"), (f"iMessage;-;{BOB}", "b0")]
    assert wait == pytest.approx(1 / relay.settings.send_rate_per_chat)
    relay.outbound.dispatch_step(100.0 + wait / 2)
    assert len(osascript.calls()) == 2
    relay.outbound.dispatch_step(100.0 + wait)
    assert [t for c, t in osascript.sent() if c.endswith(ALICE)] == ["a0", "a1"]


def test_failed_sends_are_retried_a_bounded_number_of_times(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages keeps failing: three attempts, then message_failed with the error."""
    from archety_relay.backend.commands import SendNow

    monkeypatch.setenv("FAKE_OSASCRIPT_FAIL", "execution error: Messages got an error (-1708)")
    relay.outbound.execute(SendNow("f1", f"iMessage;-;{ALICE}", "doomed"), 0.0)
    now = 0.0
    for _ in range(10):
        wait = relay.outbound.dispatch_step(now)
        if wait is None:
            break
        now += wait + 0.01
    assert len(osascript.calls()) == 3
    failed = [e for e in relay.store.pending_events() if e.event_type == "message_failed"]
    assert len(failed) == 1 and "-1708" in failed[0].payload["details"]["error"]


def test_missing_automation_permission_holds_the_send_with_the_fix(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-1743 (not authorized) is not retried at once and not failed: the reply is kept for when
    Automation is allowed (issue #22), and the log names the fix (tests/macos/test_automation)."""
    from archety_relay.backend.commands import SendNow

    monkeypatch.setenv("FAKE_OSASCRIPT_FAIL", "Not authorized to send Apple events (-1743)")
    relay.outbound.execute(SendNow("p1", f"iMessage;-;{ALICE}", "hello"), 0.0)
    relay.outbound.dispatch_step(0.0)
    relay.outbound.dispatch_step(10.0)
    assert len(osascript.calls()) == 1
    assert relay.store.outgoing_counts() == {"pending": 1}
    assert not [e for e in relay.store.pending_events() if e.event_type == "message_failed"]


def test_kill_switch_stores_but_does_not_send(
    start_relay: Callable[..., RelayProcess],
    replying: dict[str, str],
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
) -> None:
    """ARCHETY_SEND_ENABLED=0: replies are stored, nothing reaches Messages, and it says so."""
    chat = writer.direct_chat(ALICE)
    backend.script(MSG, Behaviour(body={"should_respond": True, "reply_text": "shh"}))
    relay = start_relay({**replying, "ARCHETY_SEND_ENABLED": "0"})
    writer.message("hello?", sender=ALICE, chat=chat)
    assert wait_until(lambda: log_events(relay.log, "sending_disabled"), 10)
    assert osascript.calls() == []


def test_history_is_pruned_and_unacknowledged_events_are_bounded(relay: Relay) -> None:
    """Finished sends and seen command ids go after 30 days; events a backend never acks go
    after 7 days or beyond 5,000, so the state file cannot grow without bound."""
    from archety_relay.store import NewOutgoing
    from archety_relay.store.outgoing import EVENT_MAX_COUNT, SENT

    store = relay.store
    day = 86400.0
    old, now = 1_000_000.0, 1_000_000.0 + 40 * day
    store.add_outgoing([NewOutgoing("g", "t", old, "send_message", "c-old")], old)
    item = store.heads_due(old)[0]
    store.finish(item, SENT, old, "message_sent", {"command_id": "c-old"})
    store.add_outgoing([NewOutgoing("g", "pending one", now + day, "schedule_message")], old)
    store.first_sight("c-old", old)
    for i in range(EVENT_MAX_COUNT + 10):
        store.add_event("command_completed", {"n": i}, now - day)
    store.prune_history(now)
    assert store.outgoing_counts() == {"pending": 1}
    assert store.first_sight("c-old", now)  # forgotten, so it counts as new again
    events = store.pending_events(limit=10)
    assert len(events) == 10 and events[0].payload["n"] == 10
    store.prune_history(now + 8 * day)
    assert store.pending_events() == []


def test_once_sends_a_due_reply(
    env: dict[str, str],
    tmp_path: Path,
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
) -> None:
    """--once delivers, stores the reply, and hands what is due to Messages before it exits."""
    from conftest import run_cli

    chat = writer.direct_chat(ALICE)
    run_cli(["--once"], env, cwd=tmp_path)
    writer.message("ping", sender=ALICE, chat=chat)
    backend.script(MSG, Behaviour(body={"should_respond": True, "reply_text": "pong"}))
    result = run_cli(["--once"], {**env, **osascript.env}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert osascript.sent() == [(f"iMessage;-;{ALICE}", "pong")]
    assert "outgoing     : 1 sent" in result.stdout


def test_a_sends_outcome_reaches_the_backend_without_waiting_for_the_sync_interval(
    start_relay: Callable[..., RelayProcess],
    replying: dict[str, str],
    writer: MessagesWriter,
    backend: StubBackend,
    osascript: FakeOsascript,
) -> None:
    """With the sync interval at an hour, the backend still hears `message_sent` for a reply
    within seconds, from a sync the send itself asked for: before, the outcome waited for the
    next scheduled sync, up to ARCHETY_SYNC_INTERVAL later."""
    alice = writer.direct_chat(ALICE)
    backend.respond_with(
        MSG, lambda body: Behaviour(body={"should_respond": True, "reply_text": "on my way"})
    )
    relay = start_relay({**replying, "ARCHETY_SYNC_INTERVAL": "3600"})
    assert wait_until(lambda: len(backend.requests_to(SYNC)) >= 1)  # the sync at start
    writer.message("where are you?", sender=ALICE, chat=alice)
    assert wait_until(lambda: (f"iMessage;-;{ALICE}", "on my way") in osascript.sent())

    def sent() -> list[dict[str, object]]:
        return [e for e in _events(backend) if e["event_type"] == "message_sent"]

    assert wait_until(lambda: bool(sent()), timeout=15)
    assert sent()[0]["chat_guid"] == f"iMessage;-;{ALICE}"
    relay.terminate()
