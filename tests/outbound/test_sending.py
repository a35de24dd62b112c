"""Sending through Messages.app counts only what Messages recorded (issue #12.2, review #14).

osascript is the fake first on PATH (see conftest): it runs the send script's fallbacks against
the test's real chat.db and writes the outgoing row as Messages does, or, when told, exits 0 and
writes nothing, or cannot find a chat by `chat id` (-1728), as macOS 26 does.
"""

from __future__ import annotations

import threading

import pytest
from conftest import ALICE, BOB, FakeOsascript, wait_until

from archety_relay.backend.commands import SendNow
from archety_relay.chatdb.guids import Target, send_target
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.macos import messages_app
from archety_relay.outbound.dispatch import Outbound
from archety_relay.relay import Relay


def _events(relay: Relay, kind: str) -> list[dict]:
    return [e.payload for e in relay.store.pending_events() if e.event_type == kind]


def _sent_rows(writer: MessagesWriter, chat: int) -> int:
    return int(
        writer.conn.execute(
            "SELECT COUNT(*) FROM message AS m JOIN chat_message_join AS j "
            "ON j.message_id = m.ROWID WHERE m.is_from_me = 1 AND j.chat_id = ?",
            (chat,),
        ).fetchone()[0]
    )


def _timing_out_after_1s(relay: Relay) -> Outbound:
    """The relay's outbound with osascript killed after 1 s instead of 30."""
    return Outbound(
        relay.settings,
        relay.store,
        relay.chatdb,
        send=lambda target, text: messages_app.send(target, text, timeout=1.0),
    )


def test_a_send_messages_recorded_is_reported_sent(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript
) -> None:
    """Messages writes the outgoing row into the chat: message_sent, one osascript call."""
    chat = writer.direct_chat(ALICE)
    relay.outbound.execute(SendNow("s1", f"iMessage;-;{ALICE}", "hello"), 100.0)
    relay.outbound.dispatch_step(100.0)
    assert osascript.sent() == [(f"iMessage;-;{ALICE}", "hello")]
    assert _sent_rows(writer, chat) == 1
    assert [e["command_id"] for e in _events(relay, "message_sent")] == ["s1"]
    assert _events(relay, "message_failed") == []


def test_exit_0_with_nothing_recorded_is_a_failure_never_sent(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """osascript says yes but Messages wrote nothing (macOS 26 group sends): message_failed with
    the reason, no message_sent, and no blind retry that could double a late bubble."""
    writer.direct_chat(ALICE)
    monkeypatch.setenv("FAKE_OSASCRIPT_MODE", "silent")
    relay.outbound.confirm_seconds = 0.2
    relay.outbound.execute(SendNow("s2", f"iMessage;-;{ALICE}", "into the void"), 100.0)
    for step in range(5):
        relay.outbound.dispatch_step(100.0 + 20 * step)
    assert len(osascript.calls()) == 1
    assert _events(relay, "message_sent") == []
    (failed,) = _events(relay, "message_failed")
    assert failed["details"]["error"].startswith("not_recorded")


def test_macos_26_chat_id_refused_falls_back_to_the_participant(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tahoe stores `any;-;<handle>` and `chat id` of it fails with -1728: the script tries the
    service's spelling, then the participant on the chat's service; the row Messages joins to
    the chat (same handle, any guid) confirms it."""
    chat = writer.chat(f"any;-;{ALICE}", 45, [ALICE], identifier=ALICE)
    monkeypatch.setenv("FAKE_OSASCRIPT_UNKNOWN_CHAT_IDS", f"any;-;{ALICE},iMessage;-;{ALICE}")
    relay.outbound.execute(SendNow("s3", f"any;-;{ALICE}", "made it"), 100.0)
    relay.outbound.dispatch_step(100.0)
    (call,) = osascript.calls()
    assert call[-5:] == [f"any;-;{ALICE}", "made it", ALICE, "iMessage", f"iMessage;-;{ALICE}"]
    assert _sent_rows(writer, chat) == 1
    assert [e["command_id"] for e in _events(relay, "message_sent")] == ["s3"]


def test_a_group_that_cannot_be_found_fails_once_with_the_reason(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group chat has no participant fallback: -1728 for every spelling is reported as
    group_send_unsupported at once (retrying finds the same nothing)."""
    writer.chat("any;+;chat42", 43, [ALICE, BOB], identifier="chat42")
    monkeypatch.setenv("FAKE_OSASCRIPT_UNKNOWN_CHAT_IDS", "any;+;chat42,iMessage;+;chat42")
    relay.outbound.execute(SendNow("s4", "any;+;chat42", "hi all"), 100.0)
    for step in range(4):
        relay.outbound.dispatch_step(100.0 + 20 * step)
    assert len(osascript.calls()) == 1
    (failed,) = _events(relay, "message_failed")
    assert failed["details"]["error"].startswith("group_send_unsupported")


def test_a_timed_out_send_is_looked_up_before_it_is_tried_again(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """osascript is killed at its timeout after Messages already sent (review #14): the retry
    finds the row in chat.db and reports message_sent without a second bubble."""
    chat = writer.direct_chat(ALICE)
    monkeypatch.setenv("FAKE_OSASCRIPT_SLEEP_AFTER", "5")
    outbound = _timing_out_after_1s(relay)
    outbound.execute(SendNow("s5", f"iMessage;-;{ALICE}", "once only"), 100.0)
    outbound.dispatch_step(100.0)
    assert _events(relay, "message_sent") == []  # timed out: not known yet
    outbound.dispatch_step(120.0)
    assert len(osascript.calls()) == 1
    assert _sent_rows(writer, chat) == 1
    assert [e["command_id"] for e in _events(relay, "message_sent")] == ["s5"]


def test_a_repeated_bubble_is_confirmed_only_by_a_row_of_its_own(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 2026-12-04 #6: two bubbles "ok", "ok"; Messages records the first, the second
    "succeeds" in osascript but writes nothing. The first bubble's row no longer confirms the
    second: it is message_failed (not_recorded), and no Apple guid is reported twice."""
    chat = writer.direct_chat(ALICE)
    relay.outbound.confirm_seconds = 0.2
    relay.outbound.execute(SendNow("ok-1", f"iMessage;-;{ALICE}", "ok"), 100.0)
    relay.outbound.execute(SendNow("ok-2", f"iMessage;-;{ALICE}", "ok"), 100.0)
    relay.outbound.dispatch_step(100.0)
    monkeypatch.setenv("FAKE_OSASCRIPT_MODE", "silent")
    relay.outbound.dispatch_step(110.0)
    relay.outbound.dispatch_step(150.0)  # the look 30 s later finds no row of its own either
    assert osascript.sent() == [(f"iMessage;-;{ALICE}", "ok")] * 2
    assert _sent_rows(writer, chat) == 1
    (sent,) = _events(relay, "message_sent")
    assert sent["command_id"] == "ok-1" and sent["message_guid"]
    (failed,) = _events(relay, "message_failed")
    assert failed["command_id"] == "ok-2"
    assert failed["details"]["error"].startswith("not_recorded")


def test_a_repeated_bubble_that_timed_out_is_tried_again_not_taken_for_the_first(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 2026-12-04 #6: the second "ok" times out without Messages writing anything. Before
    the retry, the look-up in chat.db must not take the first bubble's row for it: the retry is
    made, and each bubble is reported with the guid of its own row."""
    chat = writer.direct_chat(ALICE)
    outbound = _timing_out_after_1s(relay)
    outbound.execute(SendNow("ok-1", f"iMessage;-;{ALICE}", "ok"), 100.0)
    outbound.execute(SendNow("ok-2", f"iMessage;-;{ALICE}", "ok"), 100.0)
    outbound.dispatch_step(100.0)
    monkeypatch.setenv("FAKE_OSASCRIPT_MODE", "silent")
    monkeypatch.setenv("FAKE_OSASCRIPT_SLEEP_AFTER", "5")
    outbound.dispatch_step(110.0)  # times out, retryable
    monkeypatch.delenv("FAKE_OSASCRIPT_MODE")
    monkeypatch.delenv("FAKE_OSASCRIPT_SLEEP_AFTER")
    outbound.dispatch_step(130.0)
    assert len(osascript.calls()) == 3
    assert _sent_rows(writer, chat) == 2
    sent = _events(relay, "message_sent")
    assert [e["command_id"] for e in sent] == ["ok-1", "ok-2"]
    assert len({e["message_guid"] for e in sent}) == 2


def test_a_send_that_hangs_in_one_chat_does_not_hold_up_another_chats_reply(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript
) -> None:
    """Review 2026-12-04 #12: a send to a group hung until osascript's 30 s timeout, and Bob's
    reply, due at the same moment, waited behind it. Now the group's send is left running and
    Bob's reply is handed to Messages while it still hangs (here the hung send is released only
    by Bob's). The group's outcome is recorded by a later step; its retry, due together with
    Bob's next reply, goes after it."""
    group = "iMessage;+;chat42"
    writer.chat(group, 43, [ALICE, BOB], identifier="chat42")
    writer.direct_chat(BOB)
    order: list[str] = []
    bob_sent = threading.Event()

    def send(target: Target, text: str) -> messages_app.SendResult:
        order.append(text)
        if target.chat_guid == group:
            bob_sent.wait(10)  # hangs until Bob's reply went (or a stand-in timeout)
            order.append(f"{text} came back")
            return messages_app.SendResult(False, "osascript did not finish within 30s")
        bob_sent.set()
        return messages_app.send(target, text)

    outbound = Outbound(relay.settings, relay.store, relay.chatdb, send=send)
    outbound.send_wait = 0.2
    outbound.execute(SendNow("g1", group, "hello group"), 100.0)
    outbound.execute(SendNow("b1", f"iMessage;-;{BOB}", "hi bob"), 100.0)
    outbound.dispatch_step(100.0)
    assert order[:2] == ["hello group", "hi bob"]
    assert wait_until(lambda: "hello group came back" in order)
    outbound.dispatch_step(101.0)  # records the group's timeout: retry in 2 s
    bob_sent.clear()
    outbound.execute(SendNow("b2", f"iMessage;-;{BOB}", "still there?"), 103.0)
    outbound.dispatch_step(103.0)
    assert order[3:5] == ["still there?", "hello group"]
    assert [e["command_id"] for e in _events(relay, "message_sent")] == ["b1", "b2"]


def test_a_row_left_sending_by_an_error_after_osascript_is_not_sent_twice(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript
) -> None:
    """Something fails after osascript sent (the outbox locked, say) and the row stays
    `sending`: the next step finds the message in chat.db instead of sending it again."""
    chat = writer.direct_chat(ALICE)
    failures = [RuntimeError("database is locked")]

    def send_then_fail(target: Target, text: str) -> messages_app.SendResult:
        result = messages_app.send(target, text)
        if failures:
            raise failures.pop()
        return result

    outbound = Outbound(relay.settings, relay.store, relay.chatdb, send=send_then_fail)
    outbound.execute(SendNow("s6", f"iMessage;-;{ALICE}", "just once"), 100.0)
    outbound.dispatch_step(100.0)
    assert relay.store.outgoing_counts() == {"sending": 1}
    outbound.dispatch_step(110.0)
    assert len(osascript.calls()) == 1 and _sent_rows(writer, chat) == 1
    assert relay.store.outgoing_counts() == {"sent": 1}


def test_send_targets_for_each_guid_spelling() -> None:
    """What the script is given to find a chat: the guid, its other spelling, the handle of a
    direct chat, and the service (chat.service_name when the guid says `any`)."""
    assert send_target(f"any;-;{ALICE}", "SMS") == Target(
        f"any;-;{ALICE}", f"SMS;-;{ALICE}", ALICE, "SMS"
    )
    assert send_target(f"iMessage;-;{ALICE}", None) == Target(
        f"iMessage;-;{ALICE}", f"any;-;{ALICE}", ALICE, "iMessage"
    )
    assert send_target("SMS;+;chat7", None) == Target("SMS;+;chat7", "any;+;chat7", "", "SMS")
    assert send_target("any;-;chat9", None).handle == ""  # a group spelled with `-`
    assert send_target("iMessage;-;chatty@example.com", None).handle == "chatty@example.com"


def test_a_send_interrupted_before_an_hour_long_outage_is_not_reported_missed(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript
) -> None:
    """The relay died mid-send and the Mac stayed off for hours: if Messages recorded the
    message it is reported sent, not missed; one it never recorded is reported missed."""
    writer.direct_chat(ALICE)
    writer.direct_chat(BOB)
    failures = [RuntimeError("killed"), RuntimeError("killed")]

    def send_then_die(target: Target, text: str) -> messages_app.SendResult:
        if BOB not in target.chat_guid:
            messages_app.send(target, text)  # Messages records this one
        raise failures.pop()

    outbound = Outbound(relay.settings, relay.store, relay.chatdb, send=send_then_die)
    outbound.execute(SendNow("s7", f"iMessage;-;{ALICE}", "went out"), 100.0)
    outbound.execute(SendNow("s8", f"iMessage;-;{BOB}", "never did"), 100.0)
    outbound.dispatch_step(100.0)
    assert relay.store.outgoing_counts() == {"sending": 2}
    outbound.dispatch_step(100.0 + 5 * 3600)
    assert [e["command_id"] for e in _events(relay, "message_sent")] == ["s7"]
    (missed,) = _events(relay, "message_failed")
    assert missed["command_id"] == "s8" and missed["details"]["error"].startswith("missed")
    assert len(osascript.calls()) == 1


def test_an_osascript_error_never_carries_the_message_text(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AppleScript quotes the value it choked on; the error logged and reported says
    <message text> instead of the text itself."""
    writer.direct_chat(ALICE)
    failure = "execution error: Can’t make “my secret plan” into type number (-1700)"
    monkeypatch.setenv("FAKE_OSASCRIPT_FAIL", failure)
    result = messages_app.send(send_target(f"iMessage;-;{ALICE}", None), "my secret plan")
    assert not result.ok and "my secret plan" not in (result.error or "")
    assert "<message text>" in (result.error or "")


def test_a_send_recorded_late_is_found_30_s_later_and_never_sent_twice(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first send after Messages launches can be recorded after the 3 s look: the send is
    not failed and not sent again; 30 s later it is looked for once more and found (one
    bubble, message_sent). Not found then either: message_failed, still one call."""
    chat = writer.direct_chat(ALICE)
    monkeypatch.setenv("FAKE_OSASCRIPT_MODE", "silent")
    relay.outbound.confirm_seconds = 0.2
    relay.outbound.execute(SendNow("late", f"iMessage;-;{ALICE}", "slow start"), 100.0)
    relay.outbound.execute(SendNow("lost", f"iMessage;-;{BOB}", "never seen"), 100.0)
    writer.direct_chat(BOB)
    relay.outbound.dispatch_step(100.0)
    relay.outbound.dispatch_step(110.0)
    relay.outbound.dispatch_step(129.0)
    assert len(osascript.calls()) == 2 and _events(relay, "message_failed") == []
    writer.record_sent(f"iMessage;-;{ALICE}", "slow start")  # Messages, late
    relay.outbound.dispatch_step(131.0)
    assert len(osascript.calls()) == 2
    assert _sent_rows(writer, chat) == 1
    assert [e["command_id"] for e in _events(relay, "message_sent")] == ["late"]
    (failed,) = _events(relay, "message_failed")
    assert failed["command_id"] == "lost" and "nor 30s later" in failed["details"]["error"]


def test_a_group_is_never_addressed_by_the_dash_chat_form(
    relay: Relay, writer: MessagesWriter, osascript: FakeOsascript
) -> None:
    """macOS 26 spells some groups `any;-;chat…`; a send to that form "succeeds" into an empty
    ghost row. The relay tries only the `+` spellings, and reports the group unsupported when
    neither exists, instead of a send that went nowhere."""
    writer.chat("any;-;chat77", 43, [ALICE, BOB], identifier="chat77")
    relay.outbound.execute(SendNow("g1", "any;-;chat77", "hi all"), 100.0)
    relay.outbound.dispatch_step(100.0)
    (call,) = osascript.calls()
    assert not any(";-;chat" in arg for arg in call)
    assert call[-5:] == ["any;+;chat77", "hi all", "", "iMessage", "iMessage;+;chat77"]
    assert send_target("any;-;chat77", None).chat_guids[-1] == "any;-;chat77"  # looked up so
    (failed,) = _events(relay, "message_failed")
    assert failed["details"]["error"].startswith("group_send_unsupported")
