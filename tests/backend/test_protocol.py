"""The backend's whole edge protocol (issue #14): the sync request, both command dialects, rules,
per-chat context, and poison values in answers (review #3, #10).

Commands arrive in a real sync answer from the loopback backend; their outcomes are read from
the `events` of the next sync request, as the backend would read them. Messages.app is a
recording sender passed to the relay; chat.db is a real file from Apple's schema.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from conftest import (
    ALICE,
    BOB,
    SYNC_REQUEST_FIELDS,
    FakeOsascript,
    RelayProcess,
    run_cli,
    wait_until,
)

from archety_relay.backend import commands, rules
from archety_relay.backend.commands import SendNow
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.errors import ChatDbUnavailable
from archety_relay.macos.messages_app import SendResult
from archety_relay.outbound.sync import MAX_EVENTS_BYTES, fit_events
from archety_relay.relay import Relay
from archety_relay.store.outgoing import EVENT_MAX_COUNT

SYNC = "/edge/sync"
MSG = "/orchestrator/message"
A_CHAT = f"iMessage;-;{ALICE}"
B_CHAT = f"iMessage;-;{BOB}"


class Sent:
    """Stands in for Messages.app: records (chat guid, text) of every send and writes it into
    chat.db as Messages does (is_from_me = 1, joined to the chat), where the relay checks it."""

    def __init__(self, writer: MessagesWriter) -> None:
        self.writer = writer
        self.calls: list[tuple[str, str]] = []

    def __call__(self, target: Any, text: str) -> SendResult:
        self.calls.append((target.chat_guid, text))
        (chat,) = self.writer.conn.execute(
            "SELECT ROWID FROM chat WHERE guid = ?", (target.chat_guid,)
        ).fetchone()
        self.writer.message(text, sender=None, chat=chat, is_from_me=1, text_in_column=True)
        return SendResult(True)


@pytest.fixture
def sent(writer: MessagesWriter) -> Sent:
    writer.direct_chat(ALICE)
    writer.direct_chat(BOB)
    return Sent(writer)


@pytest.fixture
def make(make_relay: Callable[..., Relay], sent: Sent) -> Callable[..., Relay]:
    """A relay in this process, talking to the loopback backend; `make()` again = a restart."""
    return lambda **overrides: make_relay(send=sent, **overrides)


def answer(backend: StubBackend, *cmds: Any, **extra: Any) -> None:
    """The next sync is answered with these commands (and acks/config_updates if given)."""
    backend.script(SYNC, Behaviour(body={"commands": list(cmds), **extra}))


def cmd(command_id: str, command_type: str, key: str = "params", **args: Any) -> dict[str, Any]:
    return {"command_id": command_id, "command_type": command_type, key: args}


def events_of_next_sync(relay: Relay, backend: StubBackend) -> dict[str, list[dict[str, Any]]]:
    """Run one more sync and return its events, by command_id (or event_type when none)."""
    relay.sync_step(time.time())
    found: dict[str, list[dict[str, Any]]] = {}
    for e in backend.requests_to(SYNC)[-1].body["events"]:
        found.setdefault(e.get("command_id") or e["event_type"], []).append(e)
    return found


def relay_all(relay: Relay) -> None:
    relay.capture_step(time.time())
    for _ in range(50):
        if relay.deliver_step(time.monotonic()).kind != "delivered":
            break


def bodies(backend: StubBackend) -> list[dict[str, Any]]:
    return [r.body for r in backend.messages()]


# -- the sync request ---------------------------------------------------------------------------
def test_sync_request_has_the_integration_documents_fields(
    make: Callable[..., Relay], backend: StubBackend
) -> None:
    """status is the string "active", the document's capability names are there, the figures
    sit under stats, last_sync is ISO 8601 even on the first sync, last_command_id follows."""
    relay = make()
    answer(backend, cmd("c-1", "list_scheduled"))
    relay.sync_step(time.time())
    relay.sync_step(time.time())
    first, second = (r.body for r in backend.requests_to(SYNC))
    assert set(first) == SYNC_REQUEST_FIELDS
    assert first["status"] == "active"
    assert {"schedule", "filter", "local_cache", "set_rule", "emit_event"} <= set(
        first["capabilities"]
    )
    assert {"queue_depth", "dead_letters", "uptime_s", "rules"} <= set(first["stats"])
    assert datetime.fromisoformat(first["last_sync"]).tzinfo is not None
    assert (first["last_command_id"], second["last_command_id"]) == (None, "c-1")


def test_sync_status_is_paused_while_the_secret_is_rejected_and_degraded_without_chatdb(
    make: Callable[..., Relay], backend: StubBackend, writer: MessagesWriter
) -> None:
    """A 401 on a message makes the next sync say "paused"; a chat.db that cannot be read
    makes it say "degraded"; both recover to "active"."""
    chat = writer.direct_chat(ALICE)
    relay = make()
    relay.capture_step(time.time())
    writer.message("hi", sender=ALICE, chat=chat)
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(401))
    assert relay.deliver_step(time.monotonic()).kind == "auth_paused"
    relay.sync_step(time.time())
    relay.lanes.probe_now()  # the probe is due now (what SIGHUP does)
    assert relay.deliver_step(time.monotonic()).kind == "delivered"
    relay.sync_step(time.time())
    moved = writer.path.with_name("moved.db")
    writer.path.rename(moved)
    with pytest.raises(ChatDbUnavailable):
        relay.capture_step(time.time())
    relay.sync_step(time.time())
    moved.rename(writer.path)
    relay.capture_step(time.time())
    relay.sync_step(time.time())
    assert [r.body["status"] for r in backend.requests_to(SYNC)] == [
        "paused",
        "active",
        "degraded",
        "active",
    ]


# -- both dialects ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command_type", "key", "chat_key", "text_key"),
    [
        ("send_message", "params", "chat_guid", "text"),
        ("send_message_now", "payload", "thread_id", "text"),
        ("send_message", "payload", "chat_guid", "message_text"),
        ("send_message_now", "params", "thread_id", "message_text"),
    ],
)
def test_send_in_either_dialect_reaches_messages_and_is_reported(
    make: Callable[..., Relay],
    backend: StubBackend,
    sent: Sent,
    command_type: str,
    key: str,
    chat_key: str,
    text_key: str,
) -> None:
    """params/payload, chat_guid/thread_id, text/message_text, send_message/send_message_now:
    each form sends the text to the chat and is acknowledged as command_completed."""
    relay = make()
    answer(backend, cmd("c-s", command_type, key, **{chat_key: A_CHAT, text_key: "hey there"}))
    relay.sync_step(time.time())
    relay.outbound.dispatch_step(time.time())
    assert sent.calls == [(A_CHAT, "hey there")]
    events = events_of_next_sync(relay, backend)["c-s"]
    assert {e["event_type"] for e in events} == {"command_completed", "message_sent"}


def test_a_chat_named_by_its_chat_identifier_is_found_in_chatdb(
    make: Callable[..., Relay], backend: StubBackend, sent: Sent, writer: MessagesWriter
) -> None:
    """The previous client's thread_id is chat.chat_identifier (`+1555…`, `chat6553…`): the
    send goes to that chat's guid; an identifier no chat has is command_failed."""
    writer.group_chat("chat6553", [ALICE, BOB])
    relay = make()
    answer(
        backend,
        cmd("i-1", "send_message_now", "payload", thread_id=ALICE, text="to alice"),
        cmd("i-2", "send_message_now", "payload", thread_id="chat6553", text="to the group"),
        cmd("i-3", "send_message_now", "payload", thread_id="+15550000000", text="to nobody"),
    )
    relay.sync_step(time.time())
    relay.outbound.dispatch_step(time.time())
    assert sent.calls == [(A_CHAT, "to alice"), ("iMessage;+;chat6553", "to the group")]
    (failed,) = events_of_next_sync(relay, backend)["i-3"]
    assert failed["details"]["reason"] == "no chat in chat.db has that thread_id"


def test_schedule_ids_cancel_in_either_dialect_and_immediate_runs_at_once(
    make: Callable[..., Relay], backend: StubBackend, sent: Sent
) -> None:
    """A schedule's command_completed carries details.schedule_id (and message_ids);
    cancel_scheduled {schedule_id} and cancel_message {message_id} both cancel; a schedule with
    priority immediate is sent now although its send_at is tomorrow."""
    relay = make()
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    answer(
        backend,
        cmd(
            "s-1",
            "schedule_message",
            "payload",
            thread_id=A_CHAT,
            message_text="one",
            send_at=tomorrow,
        ),
        cmd("s-2", "schedule_message", chat_guid=B_CHAT, text="two", send_at=tomorrow),
        {
            **cmd("s-3", "schedule_message", chat_guid=B_CHAT, text="now!", send_at=tomorrow),
            "priority": "immediate",
        },
    )
    relay.sync_step(time.time())
    done = events_of_next_sync(relay, backend)
    id1, id2 = (done[c][0]["details"]["schedule_id"] for c in ("s-1", "s-2"))
    assert done["s-1"][0]["message_ids"] == [id1]
    answer(
        backend,
        cmd("x-1", "cancel_scheduled", "payload", schedule_id=id1),
        cmd("x-2", "cancel_message", message_id=id2),
        cmd("x-3", "cancel_scheduled", "payload", schedule_id=id2),  # already cancelled
    )
    relay.sync_step(time.time())
    relay.outbound.dispatch_step(time.time())
    assert sent.calls == [(B_CHAT, "now!")]
    assert sorted((o.id, o.status) for o in relay.store.scheduled(None)) == [
        (id1, "cancelled"),
        (id2, "cancelled"),
        (id2 + 1, "sent"),
    ]
    after = events_of_next_sync(relay, backend)
    assert [after[c][0]["event_type"] for c in ("x-1", "x-2", "x-3")] == [
        "command_completed",
        "command_completed",
        "command_failed",
    ]
    assert after["x-1"][0]["details"]["schedule_id"] == id1


def test_list_scheduled_answers_a_page_and_no_sync_carries_an_oversized_event(
    make: Callable[..., Relay], backend: StubBackend
) -> None:
    """Review 2026-12-04 #8: 120 schedules of 16 KB and a list_scheduled made one 1.9 MB event
    that went first in every sync (behind nginx's 1 MB limit, every sync failed). Now a page of
    50 with texts cut to 500 characters, the total and the next offset; `offset` pages on. And
    no sync carries more than its event budget."""
    relay = make()
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    for batch in range(3):  # 40 a sync answer: 120 in one would pass the 1 MiB answer cap
        answer(
            backend,
            *(
                cmd(
                    f"s-{batch}-{i}",
                    "schedule_message",
                    chat_guid=A_CHAT,
                    text="x" * 16384,
                    send_at=tomorrow,
                )
                for i in range(40)
            ),
            ack_events=[e.event_id for e in relay.store.pending_events(limit=1000)],
        )
        relay.sync_step(time.time())
    relay.store.ack_events([e.event_id for e in relay.store.pending_events(limit=1000)])
    answer(backend, cmd("L1", "list_scheduled"), cmd("L2", "list_scheduled", offset=100, limit=40))
    relay.sync_step(time.time())
    for _ in range(3):
        relay.sync_step(time.time())
    syncs = backend.requests_to(SYNC)
    assert max(len(json.dumps(r.body["events"]).encode()) for r in syncs) <= MAX_EVENTS_BYTES
    events = {e.get("command_id"): e for r in syncs for e in r.body["events"]}
    first, last = events["L1"]["details"], events["L2"]["details"]
    assert (len(first["scheduled"]), first["total"], first["next_offset"]) == (50, 120, 50)
    assert (len(last["scheduled"]), last["offset"], last["next_offset"]) == (20, 100, None)
    assert {len(i["text"]) for i in first["scheduled"]} == {500}
    assert {i["text_chars"] for i in first["scheduled"]} == {16384}


def test_a_sync_answer_past_the_size_cap_is_reported_not_silently_ignored(
    make: Callable[..., Relay], backend: StubBackend
) -> None:
    """Review 2026-12-04 (minor): an answer of 1.9 MB (120 schedule_message of 16 KB) is cut at
    1 MiB, so nothing of it can be read. Before, the only trace was an INFO `sync commands=0`;
    now a warning names it and the next sync tells the backend `sync_answer_too_large` with
    the limit, so it can send smaller pages. None of the answer's commands ran."""
    relay = make()
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    answer(
        backend,
        *(
            cmd(f"s-{i}", "schedule_message", chat_guid=A_CHAT, text="x" * 16384, send_at=tomorrow)
            for i in range(120)
        ),
    )
    with structlog.testing.capture_logs() as logs:
        relay.sync_step(time.time())
    (warning,) = [e for e in logs if e["event"] == "sync_answer_too_large"]
    assert warning["log_level"] == "warning" and warning["limit_bytes"] == 1024 * 1024
    (reported,) = events_of_next_sync(relay, backend)["sync_answer_too_large"]
    assert reported["details"]["limit_bytes"] == 1024 * 1024
    assert relay.store.scheduled(None) == []


def test_an_emit_event_flood_is_capped_and_never_pushes_out_a_commands_result(
    make: Callable[..., Relay], backend: StubBackend
) -> None:
    """Review 2026-12-04 (minor): one answer of 9,000 emit_event left 9,021 event rows, and the
    hourly cap then dropped the oldest events, unsent command results among them. Now at most
    100 emit_event of an answer are carried out and one commands_refused event counts the rest;
    past the 5,000 cap the emitted events go first, and a command's result stays."""
    relay = make()
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    answer(backend, cmd("keep", "schedule_message", chat_guid=A_CHAT, text="hi", send_at=tomorrow))
    relay.sync_step(time.time())
    answer(
        backend,
        *(
            {"command_id": f"e{i}", "command_type": "emit_event", "params": {"event_type": "ping"}}
            for i in range(9000)
        ),
    )
    relay.sync_step(time.time())
    pending = relay.store.pending_events(limit=20_000)
    assert len(pending) <= 200
    kinds = [e.event_type for e in pending]
    assert kinds.count("ping") == 100 and "command_completed" in kinds
    (refused,) = [e.payload for e in pending if e.event_type == "commands_refused"]
    assert refused["details"]["count"] == 8900
    assert refused["details"]["command_ids"][0] == "e100"

    for i in range(EVENT_MAX_COUNT):  # a slower flood, answer after answer
        relay.outbound.execute(commands.EmitEvent(f"f{i}", "pong", {"details": {}}), time.time())
    relay.store.prune_history(time.time())
    pending = relay.store.pending_events(limit=20_000)
    assert len(pending) == EVENT_MAX_COUNT
    assert [e.payload["command_id"] for e in pending if e.event_type == "command_completed"] == [
        "keep"
    ]


def test_an_event_larger_than_a_syncs_budget_is_shortened_keeping_its_ids() -> None:
    """The first event of a page always goes out, so it alone must fit: a 1.9 MB event (the
    old list_scheduled, 120 texts of 16 KB) is cut to the budget, marked truncated, and keeps
    the ids the backend acknowledges and matches it by."""
    huge = {
        "event_id": "evt-1",
        "event_type": "command_completed",
        "timestamp": "2026-12-04T00:00:00Z",
        "command_id": "L1",
        "details": {"scheduled": [{"message_id": i, "text": "x" * 16384} for i in range(120)]},
    }
    (fitted,) = fit_events([huge])
    assert len(json.dumps(fitted, ensure_ascii=False).encode()) <= MAX_EVENTS_BYTES
    assert fitted["truncated"] is True
    assert {k: fitted[k] for k in ("event_id", "event_type", "command_id")} == {
        "event_id": "evt-1",
        "event_type": "command_completed",
        "command_id": "L1",
    }
    assert fit_events([{"event_id": "e", "n": 1}]) == [{"event_id": "e", "n": 1}]


def test_reflex_bubble_goes_without_the_pacing_gap(
    make: Callable[..., Relay], backend: StubBackend, sent: Sent
) -> None:
    """Right after a send to a chat, a normal bubble waits for the per-chat gap; a
    bubble_type reflex one goes at once."""
    relay = make()
    now = time.time()
    answer(
        backend,
        cmd("a-1", "send_message", chat_guid=A_CHAT, text="first A"),
        cmd("b-1", "send_message", chat_guid=B_CHAT, text="first B"),
    )
    relay.sync_step(now)
    relay.outbound.dispatch_step(now)
    answer(
        backend,
        cmd("a-2", "send_message", chat_guid=A_CHAT, text="normal A"),
        cmd(
            "b-2",
            "send_message_now",
            "payload",
            thread_id=B_CHAT,
            text="reflex B",
            bubble_type="reflex",
        ),
    )
    relay.sync_step(now)
    relay.outbound.dispatch_step(now + 0.01)
    assert sent.calls == [(A_CHAT, "first A"), (B_CHAT, "first B"), (B_CHAT, "reflex B")]


# -- rules --------------------------------------------------------------------------------------
def rule(
    name: str, rule_type: str, *conditions: tuple[str, str, Any], **config: Any
) -> dict[str, Any]:
    return {
        "rule_type": rule_type,
        "rule_config": {
            "name": name,
            "conditions": [{"field": f, "operator": o, "value": v} for f, o, v in conditions],
            **config,
        },
    }


def test_filter_rule_keeps_a_message_from_the_orchestrator_and_says_so_across_a_restart(
    make: Callable[..., Relay], backend: StubBackend, writer: MessagesWriter
) -> None:
    """set_rule filter: a matching message never reaches /orchestrator/message and a
    message_filtered event names it; the rule is still there after a restart; enabled false
    (upserted by name) turns it off."""
    chat = writer.direct_chat(ALICE)
    relay = make()
    relay.capture_step(time.time())
    answer(
        backend,
        cmd("r-1", "set_rule", **rule("no-spam", "filter", ("content", "contains", "WIN A PRIZE"))),
    )
    relay.sync_step(time.time())
    relay = make()  # restart: the rule comes back from the state database
    writer.message("you win a prize!!", sender=ALICE, chat=chat, guid="SPAM-1")
    writer.message("lunch?", sender=ALICE, chat=chat, guid="OK-1")
    relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == ["lunch?"]
    (filtered,) = events_of_next_sync(relay, backend)["message_filtered"]
    assert (filtered["message_guid"], filtered["chat_guid"], filtered["details"]) == (
        "SPAM-1",
        A_CHAT,
        {"rule": "no-spam"},
    )
    answer(
        backend,
        cmd(
            "r-2",
            "set_rule",
            **rule("no-spam", "filter", ("content", "contains", "prize"), enabled=False),
        ),
    )
    relay.sync_step(time.time())
    writer.message("another prize", sender=ALICE, chat=chat)
    relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == ["lunch?", "another prize"]


def test_auto_reply_answers_locally_and_still_posts_the_message(
    make: Callable[..., Relay], backend: StubBackend, writer: MessagesWriter, sent: Sent
) -> None:
    """set_rule auto_reply: the reply goes to the chat through the outgoing path, a
    rule_triggered event reports it, and the message is posted with metadata.auto_replied."""
    chat = writer.direct_chat(BOB)
    relay = make()
    relay.capture_step(time.time())
    answer(
        backend,
        cmd(
            "r-1",
            "set_rule",
            "payload",
            **rule(
                "away",
                "auto_reply",
                ("sender", "equals", BOB),
                ("is_group", "equals", False),
                ("content", "starts_with", "are you"),
                action={"type": "auto_reply", "parameters": {"text": "away until 5"}},
            ),
        ),
    )
    relay.sync_step(time.time())
    writer.message("Are you there?", sender=BOB, chat=chat, guid="Q-1")
    relay_all(relay)
    relay.outbound.dispatch_step(time.time())
    assert sent.calls == [(B_CHAT, "away until 5")]
    (body,) = bodies(backend)
    assert body["metadata"]["auto_replied"] is True
    events = events_of_next_sync(relay, backend)
    assert events["rule_triggered"][0]["details"] == {"rule": "away", "action": "auto_reply"}
    assert events["rule_triggered"][0]["message_guid"] == "Q-1"


def test_rules_the_relay_cannot_run_are_refused_with_the_reason(
    make: Callable[..., Relay], backend: StubBackend
) -> None:
    """forward / schedule_reply rules, a bad regular expression, an unknown field: each is
    command_failed with a reason, and none of them is stored."""
    relay = make()
    answer(
        backend,
        cmd("r-f", "set_rule", **rule("fw", "forward", ("sender", "equals", ALICE))),
        cmd("r-x", "set_rule", **rule("bad", "filter", ("content", "matches", "(unclosed"))),
        cmd("r-u", "set_rule", **rule("odd", "filter", ("mood", "equals", "grumpy"))),
    )
    relay.sync_step(time.time())
    events = events_of_next_sync(relay, backend)
    reasons = {c: events[c][0]["details"]["reason"] for c in ("r-f", "r-x", "r-u")}
    assert all(events[c][0]["event_type"] == "command_failed" for c in reasons)
    assert "not supported" in reasons["r-f"]
    assert "regular expression" in reasons["r-x"]
    assert "field" in reasons["r-u"]
    assert relay.store.rules() == []


def test_a_filter_with_a_misspelt_or_missing_conditions_key_is_refused_not_run_on_everything(
    make: Callable[..., Relay], backend: StubBackend, writer: MessagesWriter
) -> None:
    """Review 2026-12-04 #7: `"condition"` for `"conditions"` was read as no conditions, and a
    filter with none held back every message. Now a misspelt key, an unknown key in a condition,
    a filter without conditions and one with an empty list are each command_failed with the
    reason, nothing is stored, and the next message still reaches the orchestrator. A rule
    stored that way by an older version is skipped when the rules are loaded."""
    chat = writer.direct_chat(ALICE)
    relay = make()
    relay.capture_step(time.time())
    spam = {"field": "content", "operator": "contains", "value": "win a prize"}
    answer(
        backend,
        cmd(
            "r-typo", "set_rule", rule_type="filter", rule_config={"name": "s", "condition": [spam]}
        ),
        cmd("r-none", "set_rule", rule_type="filter", rule_config={"name": "s"}),
        cmd("r-empty", "set_rule", rule_type="filter", rule_config={"name": "s", "conditions": []}),
        cmd(
            "r-ckey",
            "set_rule",
            rule_type="filter",
            rule_config={"name": "s", "conditions": [{**spam, "negate": True}]},
        ),
    )
    relay.sync_step(time.time())
    events = events_of_next_sync(relay, backend)
    reasons = {
        c: events[c][0]["details"]["reason"] for c in ("r-typo", "r-none", "r-empty", "r-ckey")
    }
    assert {events[c][0]["event_type"] for c in reasons} == {"command_failed"}
    assert "unknown key(s) in rule_config: condition" in reasons["r-typo"]
    assert "conditions must be a list" in reasons["r-none"]
    assert "at least one condition" in reasons["r-empty"]
    assert "unknown key(s) in a condition: negate" in reasons["r-ckey"]
    assert relay.store.rules() == []
    with relay.store.command("c-old", time.time()) as tx:
        assert tx is not None
        tx.put_rule("old", {"rule_type": "filter", "rule_config": {"name": "old"}})
    relay = make()  # an older version stored a filter with no conditions: not loaded
    writer.message("hey are we still on for dinner?", sender=ALICE, chat=chat)
    relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == ["hey are we still on for dinner?"]


def test_a_catastrophic_pattern_is_cut_off_and_the_message_still_goes(
    make: Callable[..., Relay], backend: StubBackend, writer: MessagesWriter
) -> None:
    """`(a|aa)+$` against sixty a's and a "!" backtracks for longer than anyone would wait in
    Python's re; here the match runs out of its budget, counts as no match, is logged, and the
    message is delivered. A rule that does this three times is turned off and reported."""
    hostile = rules.parse(rule("evil", "filter", ("content", "matches", "(a|aa)+$")))
    assert isinstance(hostile, rules.Rule)
    facts = rules.Facts(sender=ALICE, content="a" * 60 + "!", chat_keys=(A_CHAT,), is_group=False)
    assert rules.decide([hostile], facts) == rules.Verdict("deliver", timed_out=("evil",))

    chat = writer.direct_chat(ALICE)
    relay = make()
    relay.capture_step(time.time())
    answer(
        backend,
        cmd("r-1", "set_rule", **rule("evil", "filter", ("content", "matches", "(a|aa)+$"))),
    )
    relay.sync_step(time.time())
    hostile_texts = ["a" * 60 + f"{i}!" for i in range(4)]
    with structlog.testing.capture_logs() as logs:
        for text in hostile_texts:
            writer.message(text, sender=ALICE, chat=chat)
            relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == hostile_texts
    # after three timeouts the rule is turned off, so the fourth message costs nothing
    assert [e["rule"] for e in logs if e["event"] == "rule_match_timeout"] == ["evil"] * 3
    assert [e["rule"] for e in logs if e["event"] == "rule_disabled"] == ["evil"]
    (error,) = events_of_next_sync(relay, backend)["error"]
    assert error["details"]["error"] == "rule_disabled" and error["details"]["rule"] == "evil"
    assert [r["rule_config"]["enabled"] for r in relay.store.rules()] == [False]


def test_status_lists_the_rules(
    make: Callable[..., Relay], backend: StubBackend, env: dict[str, str], tmp_path: Path
) -> None:
    """`archety-relay status` names each rule, its type and whether it is enabled."""
    relay = make()
    answer(
        backend,
        cmd("r-1", "set_rule", **rule("no-spam", "filter", ("content", "contains", "prize"))),
        cmd(
            "r-2",
            "set_rule",
            **rule("away", "auto_reply", action={"parameters": {"text": "brb"}}, enabled=False),
        ),
    )
    relay.sync_step(time.time())
    relay.store.close()
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    assert "no-spam (filter, enabled)" in human
    assert "away (auto_reply, disabled)" in human
    machine = json.loads(run_cli(["status", "--json"], env, cwd=tmp_path).stdout)
    assert [(r["name"], r["enabled"]) for r in machine["rules"]] == [
        ("no-spam", True),
        ("away", False),
    ]


# -- context, plan, emit_event, upload_retry --------------------------------------------------
def test_context_and_plan_ride_on_the_chats_messages_until_reset(
    make: Callable[..., Relay], backend: StubBackend, writer: MessagesWriter, sent: Sent
) -> None:
    """context_update (notify_text sent to the chat) and update_plan, keyed by chat guid or by
    the previous client's thread_id (chat_identifier), are carried by that chat's later
    messages and by no other chat's; context_reset removes the context and keeps the plan;
    both survive a restart."""
    alice, bob = writer.direct_chat(ALICE), writer.direct_chat(BOB)
    relay = make()
    relay.capture_step(time.time())
    answer(
        backend,
        cmd(
            "k-1",
            "context_update",
            "payload",
            chat_guid=A_CHAT,
            thread_id=ALICE,
            app_id="trivia",
            room_id="room-9",
            metadata={"round": 2},
            notify_text="trivia started",
        ),
        cmd(
            "p-1", "update_plan", "payload", thread_id=ALICE, plan_data={"steps": ["ask", "score"]}
        ),
    )
    relay.sync_step(time.time())
    relay = make()
    writer.message("answer: 42", sender=ALICE, chat=alice)
    writer.message("unrelated", sender=BOB, chat=bob)
    relay_all(relay)
    relay.outbound.dispatch_step(time.time())
    assert sent.calls == [(A_CHAT, "trivia started")]
    answer(
        backend,
        cmd("k-2", "context_reset", "payload", chat_guid=A_CHAT, thread_id=ALICE, reason="done"),
        cmd(
            "k-3", "context_update", "payload", thread_id="chat77", app_id="poll", notify_text="hi"
        ),
    )
    relay.sync_step(time.time())
    writer.message("after reset", sender=ALICE, chat=alice)
    relay_all(relay)
    first, other, after = bodies(backend)
    assert first["context"] == {
        "active_miniapp": "trivia",
        "room_id": "room-9",
        "state": "active",
        "metadata": {"round": 2},
    }
    assert first["plan"] == {"steps": ["ask", "score"]}
    assert "context" not in other and "plan" not in other
    assert "context" not in after and after["plan"] == {"steps": ["ask", "score"]}
    events = events_of_next_sync(relay, backend)
    assert events["k-2"][0]["details"] == {"command_type": "context_reset", "reason": "done"}
    # a notice to a chat_identifier cannot be sent, but the context is kept and the event says so
    assert events["k-3"][0]["event_type"] == "command_completed"
    assert "not sent" in events["k-3"][0]["details"]["notify"]
    relay.outbound.dispatch_step(time.time())
    assert sent.calls == [(A_CHAT, "trivia started")]


def test_emit_event_is_reported_and_upload_retry_answered(
    make: Callable[..., Relay], backend: StubBackend
) -> None:
    """emit_event comes back in the next sync as its own event_type with details = event_data;
    upload_retry of an attachment chat.db does not have is attachment_unavailable (see
    test_photos); anything else is command_failed."""
    relay = make()
    answer(
        backend,
        cmd(
            "e-1",
            "emit_event",
            "payload",
            event_type="miniapp_closed",
            chat_guid=A_CHAT,
            event_data={"room": "r1"},
        ),
        cmd("u-1", "upload_retry", "payload", attachment_guid="AT-1"),
        cmd("z-1", "self_destruct"),
    )
    relay.sync_step(time.time())
    relay.photos_step(time.time())  # upload_retry is carried out by the photos loop
    events = events_of_next_sync(relay, backend)
    (emitted,) = events["e-1"]
    assert (emitted["event_type"], emitted["chat_guid"], emitted["details"]) == (
        "miniapp_closed",
        A_CHAT,
        {"room": "r1"},
    )
    assert events["u-1"][0]["event_type"] == "attachment_unavailable"
    assert events["u-1"][0]["details"]["reason"] == "attachment_gone"
    assert "unknown command_type" in events["z-1"][0]["details"]["reason"]


# -- poison values (review #3, #10) -----------------------------------------------------------
def test_poison_values_fail_their_own_command_and_nothing_else(
    make: Callable[..., Relay], backend: StubBackend, sent: Sent
) -> None:
    """One answer holding a non-finite id, an id past 2^63, a send_at in year 10000, a lone
    surrogate, a plan nested 40 deep and a good send: each bad command is command_failed with a
    reason, the good one is sent, the surrogate text is sent cleaned, and the acknowledgement
    and the interval in the same answer still apply. An answer nested past Python's recursion
    limit is read as no answer, without an exception."""
    assert commands.parse_response('{"commands": ' + "[" * 5000) == commands.SyncResponse()
    relay = make()
    answer(backend, cmd("warm", "list_scheduled"))
    relay.sync_step(time.time())
    (warm,) = events_of_next_sync(relay, backend)["warm"]
    deep = "[" * 40 + "]" * 40
    poison = {
        "ack_events": [warm["event_id"]],
        "config_updates": {"sync_interval": "INF"},
        "commands": [
            cmd("p-inf", "cancel_message", message_id="INF"),
            cmd("p-big", "cancel_message", message_id=10**30),
            cmd(
                "p-year",
                "schedule_message",
                chat_guid=A_CHAT,
                text="x",
                send_at="9999-12-31T23:59:59-14:00",
            ),
            cmd("p-deep", "update_plan", thread_id=A_CHAT, plan_data=json.loads(deep)),
            cmd("p-sur", "send_message", chat_guid=A_CHAT, text="hi \ud83d"),
            cmd("p-good", "send_message", chat_guid=B_CHAT, text="still here"),
        ],
    }
    raw = json.dumps(poison).replace('"INF"', "1e400")  # a number JSON allows, float('inf')
    backend.script(SYNC, Behaviour(body=raw.encode()))
    relay.sync_step(time.time())
    relay.outbound.dispatch_step(time.time())
    assert sorted(sent.calls) == [(A_CHAT, "hi \ufffd"), (B_CHAT, "still here")]
    assert relay.intervals["sync_interval"] == 3600.0
    events = events_of_next_sync(relay, backend)
    for bad in ("p-inf", "p-big", "p-year", "p-deep"):
        (failed,) = events[bad]
        assert failed["event_type"] == "command_failed" and failed["details"]["reason"]
    assert "warm" not in events  # acknowledged in the same answer


def test_a_command_whose_work_fails_is_rolled_back_whole_and_reported(
    make: Callable[..., Relay], backend: StubBackend
) -> None:
    """A send whose text cannot be stored (a lone surrogate that skipped the reader) leaves no
    outgoing row and no seen mark from the attempt: it is reported command_failed instead."""
    relay = make()
    relay.outbound.execute(SendNow("w-1", A_CHAT, "bad \ud83d"), time.time())
    assert relay.store.outgoing_counts() == {}
    (failed,) = events_of_next_sync(relay, backend)["w-1"]
    assert failed["event_type"] == "command_failed"
    assert "UnicodeEncodeError" in failed["details"]["reason"]


def test_a_reply_that_cannot_be_read_or_stored_as_is_still_records_the_delivery(
    make: Callable[..., Relay], backend: StubBackend, writer: MessagesWriter, sent: Sent
) -> None:
    """A 2xx whose reply holds a lone surrogate and NUL is stored cleaned and sent; one nested
    far too deep is "nothing to say". Either way the message is delivered once, never re-POSTed."""
    chat = writer.direct_chat(ALICE)
    relay = make()
    relay.capture_step(time.time())
    backend.script(
        MSG,
        Behaviour(body=b'{"should_respond": true, "reply_text": "ok \\ud83d\\u0000!"}'),
        Behaviour(body=b'{"should_respond": true, "meta": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    )
    writer.message("one", sender=ALICE, chat=chat)
    writer.message("two", sender=ALICE, chat=chat)
    relay_all(relay)
    relay.outbound.dispatch_step(time.time())
    assert [r.body["text"] for r in backend.requests_to(MSG)] == ["one", "two"]
    assert relay.store.stats().depth == 0
    assert sent.calls == [(A_CHAT, "ok \ufffd!")]


# -- the daemon ---------------------------------------------------------------------------------
def test_the_running_daemon_applies_a_rule_from_sync_to_the_next_message(
    start_relay: Callable[..., RelayProcess],
    env: dict[str, str],
    osascript: FakeOsascript,
    writer: MessagesWriter,
    backend: StubBackend,
) -> None:
    """In the real daemon (timer, capture and dispatch threads): a filter and an auto reply set
    by a sync reach the capture thread at once; the filtered message never reaches the
    backend, the auto reply goes out through osascript, the other message is posted marked."""
    chat = writer.direct_chat(ALICE)
    answer(
        backend,
        cmd("d-1", "set_rule", **rule("quiet", "filter", ("content", "starts_with", "ignore"))),
        cmd(
            "d-2",
            "set_rule",
            **rule(
                "away",
                "auto_reply",
                ("content", "contains", "there?"),
                action={"parameters": {"text": "back at 5"}},
            ),
        ),
    )
    relay = start_relay({**osascript.env, "ARCHETY_SYNC_INTERVAL": "1"})
    assert wait_until(lambda: len(backend.requests_to(SYNC)) >= 2)  # the rules are in place
    writer.message("ignore me", sender=ALICE, chat=chat, guid="F-1")
    writer.message("you there?", sender=ALICE, chat=chat, guid="Q-1")
    (posted,) = backend.wait_for_messages(1)
    assert wait_until(lambda: (A_CHAT, "back at 5") in osascript.sent())
    assert (posted.body["message_guid"], posted.body["metadata"]["auto_replied"]) == ("Q-1", True)

    def filtered() -> list[dict[str, Any]]:
        events = [e for r in backend.requests_to(SYNC) for e in r.body["events"]]
        return [e for e in events if e["event_type"] == "message_filtered"]

    assert wait_until(lambda: bool(filtered()))
    assert filtered()[0]["message_guid"] == "F-1"
    assert [r.body["message_guid"] for r in backend.messages()] == ["Q-1"]
    relay.terminate()
