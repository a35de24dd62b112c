"""A 4xx about one chat or one sender is about that chat or sender, never an outage.

The backend may refuse a message for who sent it (404 "User not found" for a stranger, 422 for
an e-mail handle its schema rejects) or for what it holds (a picture-only message with empty
text). Such a refusal dead-letters that message and nothing else waits. Only refusals alike
from several distinct chats and senders, with no success between, mean the backend itself is
wrong (a redeploy answering 404): then everything pauses and probes, and a message that took
part never is the probe (review 2026-12-04, #1).

Step-level: `Relay` driven with chosen monotonic times against the stand-in backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from conftest import ALICE, BOB

from archety_relay.delivery.lanes import Decision, Lanes
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.policy import HttpOutcome, Verdict, verdict
from archety_relay.relay import Relay

MSG = "/orchestrator/message"
CAROL = "+15555550303"
STRANGER = "+15555550999"
STRANGERS = ["+15555550901", "+15555550902", "+15555550903"]
EMAIL = "someone@icloud.com"
USER_NOT_FOUND = Behaviour(404, body={"detail": "User not found"})


def write(writer: MessagesWriter, sender: str, *texts: str) -> None:
    chat = writer.direct_chat(sender)
    for text in texts:
        writer.message(text, sender=sender, chat=chat)


def refuse(backend: StubBackend, senders: list[str], behaviour: Behaviour) -> None:
    """The backend refuses these senders' messages, and only theirs."""
    backend.respond_with(MSG, lambda body: behaviour if body["sender"] in senders else None)


def run(relay: Relay, start: float, steps: int = 40, gap: float = 0.0) -> list[str]:
    """Deliver step after step (`gap` seconds apart) until idle: the kinds, in order."""
    kinds: list[str] = []
    now = start
    for _ in range(steps):
        kind = relay.deliver_step(now).kind
        kinds.append(kind)
        if kind == "idle":
            break
        now += gap
    return kinds


def texts(backend: StubBackend) -> list[str]:
    return [r.body["text"] for r in backend.messages()]


def test_a_stranger_refused_twice_never_slows_the_other_chats(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """The review's reproduction: the backend answers 404 "User not found" for a stranger who
    sends two messages, while Alice, Bob and Carol write too. The stranger's two messages are
    dead letters; nothing pauses, and the three others are delivered in the same steps, in
    order. (Before the fix: two refused messages of one sender paused every chat.)"""
    relay = make_relay(ARCHETY_AUTH_PROBE_INTERVAL="60")
    relay.capture_step(time.time())
    write(writer, STRANGER, "hi it's me", "hello??")
    for person in (ALICE, BOB, CAROL):
        write(writer, person, f"{person[-4:]} 1", f"{person[-4:]} 2")
    relay.capture_step(time.time())
    refuse(backend, [STRANGER], USER_NOT_FOUND)

    kinds = run(relay, 10.0)

    assert "auth_paused" not in kinds  # Delivery's kind for any pause
    assert kinds.count("dead_lettered") == 2
    assert relay.lanes.paused_until is None
    assert sorted(texts(backend)) == sorted(
        f"{p[-4:]} {n}" for p in (ALICE, BOB, CAROL) for n in (1, 2)
    )
    assert sorted(d.status for d in relay.store.dead_letters()) == [404, 404]
    assert relay.store.stats().depth == 0


def test_one_email_sender_refused_five_times_dead_letters_only_their_messages(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A schema that rejects e-mail handles answers 422 to all five of one sender's messages:
    five dead letters, no pause, Alice's message goes in the same run."""
    relay = make_relay()
    relay.capture_step(time.time())
    write(writer, EMAIL, *(f"mail {i}" for i in range(5)))
    write(writer, ALICE, "alice")
    relay.capture_step(time.time())
    refuse(backend, [EMAIL], Behaviour(422, body={"detail": "sender: not a phone number"}))

    kinds = run(relay, 10.0)

    assert "auth_paused" not in kinds
    assert kinds.count("dead_lettered") == 5
    assert texts(backend) == ["alice"]


def test_one_sender_in_three_group_chats_is_not_an_outage(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Distinct chats are not enough: one stranger writing in three groups is still one sender
    the backend does not know. Three dead letters, no pause."""
    relay = make_relay()
    relay.capture_step(time.time())
    for n in range(3):
        group = writer.group_chat(f"group {n}", [STRANGER, ALICE])
        writer.message(f"stranger in group {n}", sender=STRANGER, chat=group)
    write(writer, BOB, "bob")
    relay.capture_step(time.time())
    refuse(backend, [STRANGER], USER_NOT_FOUND)

    kinds = run(relay, 10.0)

    assert "auth_paused" not in kinds
    assert kinds.count("dead_lettered") == 3
    assert texts(backend) == ["bob"]


def test_a_redeploy_across_three_chats_pauses_and_never_probes_with_a_refused_message(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Three different chats and senders refused alike (a platform edge answering 404 while
    the backend redeploys) are an outage: sending pauses and the messages moved aside are put
    back, keeping their attempts. The probe after the pause is a message that was not refused
    (Dave's), and once it is delivered the refused ones go too, each chat in order."""
    dave = "+15555550404"
    relay = make_relay(ARCHETY_AUTH_PROBE_INTERVAL="10")
    relay.capture_step(time.time())
    for person in (ALICE, BOB, CAROL):
        write(writer, person, f"{person[-4:]} 1", f"{person[-4:]} 2")
    write(writer, dave, "dave 1")
    relay.capture_step(time.time())
    backend.set_default(MSG, Behaviour(404, body={"message": "Application not found"}))

    # Alice's two, Bob's two (two chats so far), then Carol's first: three chats, three senders.
    assert [relay.deliver_step(1.0).kind for _ in range(5)] == ["dead_lettered"] * 4 + [
        "auth_paused"
    ]
    assert relay.store.dead_letters() == []
    heads = {h.message_guid: h.attempts for h in relay.store.heads(10)}
    assert len(heads) == 4 and sorted(heads.values()) == [0, 1, 1, 1]  # attempts kept

    backend.set_default(MSG, None)
    assert relay.deliver_step(11.5).kind == "delivered"  # the probe
    assert texts(backend) == ["dave 1"]
    run(relay, 12.0)
    delivered = texts(backend)
    people = [p[-4:] for p in (ALICE, BOB, CAROL)]
    assert sorted(delivered) == sorted([f"{p} {n}" for p in people for n in (1, 2)] + ["dave 1"])
    for person in people:
        assert delivered.index(f"{person} 1") < delivered.index(f"{person} 2")


def test_messages_refused_in_a_storm_and_again_after_it_are_dead_letters_not_a_new_pause(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Three strangers the backend does not know write at once: that looks like an outage and
    pauses once. The probe is Alice's message, which is delivered; the strangers' messages,
    refused again now that the backend is known to answer, are dead letters for good. No second
    pause, and Alice's later messages are never held behind them."""
    relay = make_relay(ARCHETY_AUTH_PROBE_INTERVAL="10")
    relay.capture_step(time.time())
    for stranger in STRANGERS:
        write(writer, stranger, f"stranger {stranger[-1]}")
    write(writer, ALICE, "alice 1", "alice 2")
    relay.capture_step(time.time())
    refuse(backend, STRANGERS, USER_NOT_FOUND)

    kinds = run(relay, 1.0, gap=11.0)

    assert kinds.count("auth_paused") == 1
    # Two before the pause (put back by it), then all three once Alice's probe went through.
    assert kinds.count("dead_lettered") == 2 + 3
    assert texts(backend) == ["alice 1", "alice 2"]
    refused = {
        r.body["message_guid"] for r in backend.messages(accepted_only=False) if r.status == 404
    }
    assert {d.message_guid for d in relay.store.dead_letters()} == refused
    assert len(refused) == 3
    assert relay.store.stats().depth == 0


def test_when_only_refused_messages_are_left_one_of_them_probes_so_none_is_stranded(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A redeploy refuses the only three chats that write, and nobody else writes after: with
    no other message to probe with, one of the refused ones probes after the interval (nobody
    waits behind it), so when the backend is back all three are delivered instead of waiting
    for the next person to write."""
    relay = make_relay(ARCHETY_AUTH_PROBE_INTERVAL="10")
    relay.capture_step(time.time())
    for person in (ALICE, BOB, CAROL):
        write(writer, person, f"{person[-4:]} 1")
    relay.capture_step(time.time())
    backend.set_default(MSG, Behaviour(404, body={"message": "Application not found"}))
    assert [relay.deliver_step(1.0).kind for _ in range(3)] == ["dead_lettered"] * 2 + [
        "auth_paused"
    ]
    assert relay.deliver_step(5.0).kind == "waiting"  # paused: no probe before the interval
    assert relay.deliver_step(11.5).kind == "auth_paused"  # a refused one probes: still 404
    backend.set_default(MSG, None)
    run(relay, 22.0)
    assert sorted(texts(backend)) == sorted(f"{p[-4:]} 1" for p in (ALICE, BOB, CAROL))
    assert relay.store.dead_letters() == []


def test_a_reply_sent_before_a_redeploy_does_not_wipe_the_refusals_the_redeploy_made() -> None:
    """The orchestrator's answers take seconds and several run at once: a 200 whose request
    went 30 s before a redeploy arrives between the redeploy's 404s. It says nothing about the
    backend after its request left, so it neither clears the refusals nor lifts the pause, and
    when the storm is recognised every refused message is put back, the first ones included
    (attack on issue #21: B's and C's messages stayed dead letters for good)."""
    lanes = Lanes(max_in_flight=16, max_backoff=60.0, probe_interval=60.0, poison_attempts=5)
    not_found = HttpOutcome(404, body='{"detail": "Not Found"}', elapsed_ms=50)

    def refused(chat: str, now: float) -> Decision:
        return lanes.decide(
            f"chat-{chat}", f"m{chat}", 1, not_found, verdict(not_found), now, sender=chat
        )

    earlier = HttpOutcome(200, body="{}", elapsed_ms=50)
    assert lanes.decide("chat-B", "mB0", 1, earlier, Verdict.DELIVERED, 50.0).action == (
        "delivered"
    )
    assert refused("B", 100.0).action == "dead_letter"
    assert refused("C", 100.05).action == "dead_letter"
    late_reply = HttpOutcome(200, body="{}", elapsed_ms=30_000)
    assert lanes.decide("chat-A", "mA", 1, late_reply, Verdict.DELIVERED, 100.1).action == (
        "delivered"
    )
    storm = refused("D", 100.2)  # the third chat and sender refused alike: the backend
    assert storm.action == "paused"
    assert set(storm.restore) == {"mB", "mC"}
    # Another reply that left before the pause began does not lift it either.
    assert lanes.decide("chat-A", "mA2", 1, late_reply, Verdict.DELIVERED, 100.4).action == (
        "delivered"
    )
    assert lanes.gate(100.5) is not None


def test_a_wave_of_strangers_the_backend_never_knew_pauses_nobody() -> None:
    """Once the backend has accepted a chat, refusals count as an outage only if one of them
    is from a chat it accepted before: six new numbers refused 404 one after another are six
    dead letters, and Alice's chat, accepted a minute earlier, never waits (attack on issue
    #21: they paused every chat four times over, Alice 45 s late at a 10 s probe interval)."""
    lanes = Lanes(max_in_flight=16, max_backoff=60.0, probe_interval=60.0, poison_attempts=5)
    ok = HttpOutcome(200, body="{}", elapsed_ms=50)
    assert lanes.decide("chat-alice", "m0", 1, ok, Verdict.DELIVERED, 40.0).action == "delivered"
    not_found = HttpOutcome(404, body='{"detail": "User not found"}', elapsed_ms=50)
    for n in range(6):
        stranger = f"+1555000{n:04d}"
        decision = lanes.decide(
            f"iMessage;-;{stranger}",
            f"s{n}",
            1,
            not_found,
            verdict(not_found),
            100.0 + n,
            sender=stranger,
        )
        assert decision.action == "dead_letter"
    assert lanes.gate(106.0) is None and lanes.free_slots(106.0) == 16
    # The same refusals from chats the backend accepted before are a redeploy: a pause.
    for chat in ("b", "c"):
        lanes.decide(f"chat-{chat}", f"{chat}0", 1, ok, Verdict.DELIVERED, 107.0)
    for chat in ("alice", "b", "c"):
        last = lanes.decide(
            f"chat-{chat}", f"{chat}1", 1, not_found, verdict(not_found), 110.0, sender=chat
        )
    assert last.action == "paused"
