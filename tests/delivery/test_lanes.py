"""Chats side by side: different chats are at the backend at the same time, each chat in order.

The stand-in backend takes its time like the real orchestrator (an LLM writes the reply) and
misbehaves per chat on cue. Step-level tests drive `Relay` with chosen monotonic times; the
daemon tests run the real CLI in a subprocess.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, BOB, RelayProcess, log_events, run_cli, wait_until

from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, Received, StubBackend
from archety_relay.relay import Relay
from archety_relay.store import open_store

MSG = "/orchestrator/message"
PEOPLE = [f"+1555555{n:04d}" for n in range(200, 216)]


def write(writer: MessagesWriter, sender: str, *texts: str) -> None:
    chat = writer.direct_chat(sender)
    for text in texts:
        writer.message(text, sender=sender, chat=chat)


def by_chat(received: list[Received]) -> dict[str, list[Received]]:
    chats: dict[str, list[Received]] = defaultdict(list)
    for r in received:
        chats[r.body["chat_guid"]].append(r)
    return chats


def texts(received: list[Received]) -> list[str]:
    return [r.body["text"] for r in received]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the daemon ------------------------------------------------------------------------------


def test_chats_are_served_side_by_side_and_each_chat_stays_in_order(
    start_relay: Callable[..., RelayProcess], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Six chats write three messages each while every answer takes 0.4 s: requests of
    different chats overlap, and within a chat each request starts only after the answer to
    the one before it arrived."""
    backend.answer_delay = 0.4
    for person in PEOPLE[:6]:
        writer.direct_chat(person)
    start_relay()
    for person in PEOPLE[:6]:
        write(writer, person, *(f"{person[-4:]} #{i}" for i in range(3)))
    received = backend.wait_for_messages(18, timeout=60)
    assert len(received) == 18
    for chat, requests in by_chat(received).items():
        person = chat.rsplit(";", 1)[1]
        assert texts(requests) == [f"{person[-4:]} #{i}" for i in range(3)]
        for before, after in itertools.pairwise(requests):
            assert after.at >= before.answered_at, f"{chat}: a request overtook an answer"
    # Side by side: some request started while another chat's was still being answered.
    overlapping = [
        (a, b)
        for a in received
        for b in received
        if a.body["chat_guid"] != b.body["chat_guid"] and a.at < b.at < a.answered_at
    ]
    assert overlapping


def test_a_hung_request_holds_only_its_own_chat(
    start_relay: Callable[..., RelayProcess], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Alice's request never gets an answer; Bob's three messages go through meanwhile, and
    Alice's second message waits behind her first instead of overtaking it."""
    writer.direct_chat(ALICE)
    writer.direct_chat(BOB)
    backend.respond_with(
        MSG, lambda body: Behaviour(hang=True) if body["text"] == "alice 1" else None
    )
    start_relay({"ARCHETY_READ_TIMEOUT": "60"})
    write(writer, ALICE, "alice 1", "alice 2")
    write(writer, BOB, "bob 1", "bob 2", "bob 3")
    assert wait_until(lambda: texts(backend.messages()) == ["bob 1", "bob 2", "bob 3"], 20)
    time.sleep(0.5)
    assert "alice 2" not in texts(backend.messages(accepted_only=False))
    hung = backend.messages(accepted_only=False)
    assert [r.body["text"] for r in hung if r.status == 0] == ["alice 1"]


def test_shutdown_is_prompt_while_every_lane_waits_on_an_answer(
    start_relay: Callable[..., RelayProcess], writer: MessagesWriter, backend: StubBackend
) -> None:
    """SIGTERM while eight lanes wait on answers that never come: the relay exits 0 within
    the 5 s launchd allows, and the messages stay queued for the next start."""
    people = PEOPLE[:8]
    for person in people:
        writer.direct_chat(person)
    backend.respond_with(MSG, lambda body: Behaviour(hang=True))
    relay = start_relay({"ARCHETY_READ_TIMEOUT": "120"})
    for person in people:
        write(writer, person, "waiting")
    assert wait_until(lambda: len(backend.messages(accepted_only=False)) == 8, 20)
    rc, _took = relay.terminate(timeout=5)
    assert rc == 0
    store = open_store(Path(relay.env["ARCHETY_STATE_DIR"]))
    try:
        assert store.stats().depth == 8
    finally:
        store.close()


def test_status_shows_what_is_in_flight(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """`status` lists the chat waiting on the backend and for how long, phone masked."""
    writer.direct_chat(ALICE)
    backend.respond_with(MSG, lambda body: Behaviour(hang=True))
    start_relay({"ARCHETY_READ_TIMEOUT": "60"})
    write(writer, ALICE, "thinking…")
    assert wait_until(lambda: backend.messages(accepted_only=False), 20)

    def in_flight() -> list[dict[str, Any]]:
        done = run_cli(["status", "--json"], env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout)["in_flight"])

    assert wait_until(lambda: bool(in_flight()), 10)
    (flying,) = in_flight()
    assert flying["chat_guid"] == "iMessage;-;+1555***0101"
    assert flying["for_s"] >= 0
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    assert "in flight     : 1" in human and "+1555***0101" in human and ALICE not in human


def test_status_shows_nothing_in_flight_from_a_run_that_was_killed(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The relay is killed (-9) while Alice's message waits on the backend; the operator
    moves that message aside with `skip-head` and starts the relay again. The new run has
    nothing at the backend, so `status` must not go on listing the old run's request."""
    writer.direct_chat(ALICE)
    backend.respond_with(MSG, lambda body: Behaviour(hang=True))
    first = start_relay({"ARCHETY_READ_TIMEOUT": "60"})
    write(writer, ALICE, "thinking…")

    def in_flight() -> list[dict[str, Any]]:
        done = run_cli(["status", "--json"], env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout)["in_flight"])

    assert wait_until(lambda: bool(in_flight()), 20)
    first.kill9()
    assert (
        run_cli(["skip-head", "--chat", "iMessage;-;" + ALICE], env, cwd=tmp_path).returncode == 0
    )
    start_relay()
    assert wait_until(lambda: in_flight() == [], 10)


# -- step by step ----------------------------------------------------------------------------


def test_429_pauses_only_the_chat_it_came_for(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """The backend limits per sender: Alice's 429 with Retry-After 30 keeps Alice waiting
    exactly that long, while Bob's messages go at once."""
    relay = make_relay()
    relay.capture_step(time.time())
    write(writer, ALICE, "alice 1")
    write(writer, BOB, "bob 1", "bob 2")
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(429, headers={"Retry-After": "30"}))
    first = relay.deliver_step(100.0)
    assert first.kind == "retry" and first.wait == pytest.approx(30.0)
    assert relay.deliver_step(100.0).kind == "delivered"
    assert relay.deliver_step(100.0).kind == "delivered"
    assert relay.deliver_step(129.9).kind == "waiting"
    assert relay.deliver_step(130.1).kind == "delivered"
    assert texts(backend.messages()) == ["bob 1", "bob 2", "alice 1"]


def test_a_message_the_backend_keeps_failing_becomes_a_dead_letter_while_others_go(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A body that makes the backend answer 500 every time holds only its own chat; after
    ARCHETY_POISON_ATTEMPTS failures while other messages were delivered it is moved to the
    dead letters, and the chat goes on with its next message."""
    relay = make_relay(ARCHETY_POISON_ATTEMPTS="3", ARCHETY_MAX_BACKOFF="1")
    relay.capture_step(time.time())
    write(writer, ALICE, "poison 🧪", "alice after")
    write(writer, BOB, "bob 1", "bob 2", "bob 3")
    relay.capture_step(time.time())
    backend.respond_with(
        MSG, lambda body: Behaviour(500) if body["text"].startswith("poison") else None
    )
    now = 0.0
    kinds = []
    for _ in range(20):
        now += 2.0
        delivery = relay.deliver_step(now)
        kinds.append(delivery.kind)
        if delivery.kind == "idle":
            break
    delivered = texts(backend.messages())
    assert sorted(delivered) == ["alice after", "bob 1", "bob 2", "bob 3"]
    assert [t for t in delivered if t.startswith("bob")] == ["bob 1", "bob 2", "bob 3"]
    assert [r.status for r in backend.messages(accepted_only=False) if r.status == 500] == [500] * 3
    (dead,) = relay.store.dead_letters()
    assert dead.status == 500 and "failed 3 times" in (dead.response or "")


def test_the_backend_down_makes_every_lane_wait_and_probe_one_at_a_time(
    make_relay: Callable[..., Relay], writer: MessagesWriter
) -> None:
    """Connection refused for one chat's message is an outage for all: no other chat tries
    until the shared backoff has passed, and then only one probe goes."""
    relay = make_relay(ARCHETY_BACKEND_URL=f"http://127.0.0.1:{_closed_port()}")
    relay.capture_step(time.time())
    for person in PEOPLE[:5]:
        write(writer, person, "hello")
    relay.capture_step(time.time())
    first = relay.deliver_step(10.0)
    assert first.kind == "retry" and first.wait is not None
    chosen, wait = relay.next_deliveries(10.0)
    assert chosen == [] and wait is not None and wait >= first.wait
    probes, _ = relay.next_deliveries(10.0 + wait)
    assert len(probes) == 1


def test_401_pauses_every_chat(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A rejected secret stops all lanes, not just the chat whose message saw it."""
    relay = make_relay(ARCHETY_AUTH_PROBE_INTERVAL="60")
    relay.capture_step(time.time())
    for person in PEOPLE[:4]:
        write(writer, person, "hello")
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(401))
    assert relay.deliver_step(5.0).kind == "auth_paused"
    chosen, wait = relay.next_deliveries(5.0)
    assert chosen == [] and wait is not None and wait >= 60.0
    assert relay.next_deliveries(64.9)[0] == []
    probe, _ = relay.next_deliveries(5.0 + wait)
    assert len(probe) == 1


def test_retry_dead_puts_a_message_back_ahead_of_its_chats_newer_messages(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """A dead letter re-queued by the operator goes before the messages its chat sent after it."""
    relay = make_relay()
    relay.capture_step(time.time())
    write(writer, ALICE, "first", "second", "third")
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(422, body={"detail": "nope"}))
    assert relay.deliver_step(1.0).kind == "dead_lettered"
    assert relay.store.retry_dead(time.time()) == 1
    while relay.deliver_step(2.0).kind == "delivered":
        pass
    assert texts(backend.messages()) == ["first", "second", "third"]


def test_skip_head_moves_a_failing_message_aside_and_retry_dead_restores_it(
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
    make_relay: Callable[..., Relay],
) -> None:
    """`skip-head` picks the oldest chat head that has failed, moves it to the dead letters
    (exit 0), and says so; with nothing failing it exits 1."""
    relay = make_relay()
    relay.capture_step(time.time())
    write(writer, ALICE, "stuck", "next")
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(503))
    assert relay.deliver_step(1.0).kind == "retry"
    stuck_guid = relay.store.heads(1)[0].message_guid
    relay.store.close()
    done = run_cli(["skip-head"], env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stuck_guid in done.stdout
    again = run_cli(["skip-head"], env, cwd=tmp_path)
    assert again.returncode == 1 and "nothing to skip" in again.stdout
    store = open_store(Path(env["ARCHETY_STATE_DIR"]))
    try:
        assert [d.message_guid for d in store.dead_letters()] == [stuck_guid]
        assert [h.message_guid for h in store.heads(5)] != [stuck_guid]
    finally:
        store.close()


def test_a_delivery_that_cannot_be_recorded_is_not_posted_again(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """The backend accepted the message but the state file could not be written (another
    process held its lock): the next step retries only the write; the backend sees the
    message once."""
    import sqlite3

    from archety_relay.errors import StateError

    relay = make_relay()
    relay.capture_step(time.time())
    write(writer, ALICE, "once only")
    relay.capture_step(time.time())
    relay.store._conn.execute("PRAGMA busy_timeout = 100")
    intruder = sqlite3.connect(relay.store.path, isolation_level=None, check_same_thread=False)

    def lock_then_accept(body: Any) -> None:
        intruder.execute("BEGIN IMMEDIATE")  # taken while the backend is answering
        return None

    backend.respond_with(MSG, lock_then_accept)
    with pytest.raises(StateError):
        relay.deliver_step(1.0)
    intruder.execute("ROLLBACK")
    intruder.close()
    backend.respond_with(MSG, lambda body: None)
    assert relay.deliver_step(2.0).kind == "delivered"
    assert relay.store.stats().depth == 0
    assert len(backend.messages()) == 1


def test_a_long_reply_is_read_whole(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """An answer of several KB (three long bubbles) is parsed whole, not cut at 2,000
    characters: every bubble is stored for sending."""
    relay = make_relay(ARCHETY_SEND_ENABLED="0")
    relay.capture_step(time.time())
    write(writer, ALICE, "tell me a story")
    relay.capture_step(time.time())
    bubbles = [f"part {i} " + "🙂" * 600 for i in range(3)]
    backend.script(
        MSG, Behaviour(body={"should_respond": True, "reply_bubbles": bubbles, "debug": "x" * 900})
    )
    assert relay.deliver_step(1.0).kind == "delivered"
    assert relay.store.outgoing_counts() == {"pending": 3}


def test_lanes_logs_name_the_chat_masked(
    start_relay: Callable[..., RelayProcess], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Each delivery attempt's log line names its chat, with the phone number masked."""
    writer.direct_chat(ALICE)
    relay = start_relay()
    write(writer, ALICE, "hi")
    backend.wait_for_messages(1)
    assert wait_until(lambda: log_events(relay.log, "message_delivery_attempt"), 10)
    (line,) = log_events(relay.log, "message_delivery_attempt")
    assert line["chat_guid"] == "iMessage;-;+1555***0101"


def test_a_chat_with_a_backlog_does_not_starve_the_others(
    start_relay: Callable[..., RelayProcess],
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
) -> None:
    """After an outage, a busy group's backlog of 60 goes out one by one in its own lane while
    a newer message from someone else is delivered at once, long before the backlog is done."""
    writer.direct_chat(ALICE)
    writer.direct_chat(BOB)
    backend.set_default(MSG, Behaviour(503))
    start_relay()
    write(writer, ALICE, *(f"backlog {i}" for i in range(60)))
    write(writer, BOB, "newer, from bob")
    state = Path(env["ARCHETY_STATE_DIR"])
    assert wait_until(lambda: _queued(state) == 61, 20)
    backend.set_default(MSG, None)
    backend.answer_delay = 0.05
    received = backend.wait_for_messages(61, timeout=60)
    order = texts(received)
    assert order.index("newer, from bob") < order.index("backlog 30")
    assert [t for t in order if t.startswith("backlog")] == [f"backlog {i}" for i in range(60)]


def _queued(state_dir: Path) -> int:
    store = open_store(state_dir)
    try:
        return store.stats().depth
    finally:
        store.close()


def test_a_retry_after_is_honoured_across_a_restart(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Alice's 429 asked for an hour; the relay restarts at once: Alice's chat still waits
    (Bob's goes), because the time asked is kept with the message, not only in memory."""
    relay = make_relay()
    relay.capture_step(time.time())
    write(writer, ALICE, "alice")
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(429, headers={"Retry-After": "3600"}))
    assert relay.deliver_step(time.monotonic()).kind == "retry"
    relay.store.close()
    restarted = make_relay()
    write(writer, BOB, "bob")
    restarted.capture_step(time.time())
    assert restarted.deliver_step(time.monotonic()).kind == "delivered"
    assert restarted.deliver_step(time.monotonic()).kind == "waiting"
    assert texts(backend.messages()) == ["bob"]


def test_an_outage_after_one_success_never_dead_letters_the_waiting_message(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Alice's message meets the first 503 of an outage while Bob's, a moment earlier at the
    backend, still gets through; then the backend answers 503 to everything for as long as
    it takes Alice's message to fail ARCHETY_POISON_ATTEMPTS times and more. That one old
    success is no evidence the message is at fault: it stays queued and is delivered when
    the backend is back, not moved to the dead letters."""
    relay = make_relay(ARCHETY_POISON_ATTEMPTS="8", ARCHETY_MAX_BACKOFF="1")
    relay.capture_step(time.time())
    write(writer, ALICE, "alice 1", "alice 2")
    write(writer, BOB, "bob 1")
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(503), Behaviour(200))
    backend.set_default(MSG, Behaviour(503))
    now, kinds = 0.0, []
    for _ in range(40):
        now += 5.0
        kinds.append(relay.deliver_step(now).kind)
    assert kinds[1] == "delivered" and "dead_lettered" not in kinds
    assert relay.store.dead_letters() == []
    backend.set_default(MSG, None)
    while relay.deliver_step(now := now + 5.0).kind in ("delivered", "retry", "waiting"):
        if not relay.store.stats().depth:
            break
    assert texts(backend.messages()) == ["bob 1", "alice 1", "alice 2"]


def test_a_message_skipped_while_in_flight_and_then_delivered_is_not_sent_again(
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
    make_relay: Callable[..., Relay],
) -> None:
    """The operator runs `skip-head --chat` while that chat's message is already at the
    backend, and the backend then accepts it. The message went out: it is no longer listed
    as a dead letter, so a later `retry-dead` does not post it (and get a reply) twice."""
    relay = make_relay()
    relay.capture_step(time.time())
    write(writer, ALICE, "in flight", "next")
    relay.capture_step(time.time())
    (flying,), _ = relay.next_deliveries(1.0, limit=1)
    skipped = run_cli(["skip-head", "--chat", flying.chat_guid], env, cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    try:
        assert relay.deliver_item(flying, 1.0).kind == "delivered"
    finally:
        relay.lanes.finish(flying.chat_guid)
    assert relay.store.dead_letters() == []
    assert run_cli(["retry-dead"], env, cwd=tmp_path).returncode == 0
    while relay.deliver_step(2.0).kind == "delivered":
        pass
    assert texts(backend.messages()) == ["in flight", "next"]


def test_one_round_of_failures_in_every_lane_is_one_failure_for_the_shared_backoff(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Sixteen chats are at the backend when it answers 503 to all of them at once (a blip):
    that is one failed round, not sixteen in a row. The relay is judged down and probes once,
    after the first step of the backoff (under a second), not after the 60 s cap that sixteen
    consecutive failures would mean. Failures of requests sent after that round still add up."""
    relay = make_relay(ARCHETY_MAX_BACKOFF="60")
    relay.capture_step(time.time())
    for person in PEOPLE:
        write(writer, person, "hello")
    relay.capture_step(time.time())
    backend.set_default(MSG, Behaviour(503))
    started, _ = relay.next_deliveries(10.0)
    assert len(started) == 16
    for item in started:
        try:
            assert relay.deliver_item(item, 10.0).kind == "retry"
        finally:
            relay.lanes.finish(item.chat_guid)
    chosen, wait = relay.next_deliveries(10.0)
    assert chosen == [] and wait is not None and wait <= 1.0
    (probe,), _ = relay.next_deliveries(20.0)
    try:
        relay.deliver_item(probe, 20.0)
    finally:
        relay.lanes.finish(probe.chat_guid)
    _, second = relay.next_deliveries(20.1)
    assert second is not None and 0.5 <= second + 0.1 <= 2.0


def test_a_chat_whose_message_failed_once_is_not_put_behind_another_chats_backlog(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend
) -> None:
    """Alice's message meets one 503; Bob then has a backlog of twenty. Once Alice's short
    backoff is over and the backend answers again, Alice's message (the oldest waiting) goes
    as soon as a slot is free, not after all of Bob's: one failed try is no reason to wait
    behind every message that has never been tried."""
    relay = make_relay(ARCHETY_MAX_BACKOFF="1")
    relay.capture_step(time.time())
    write(writer, ALICE, "alice")
    relay.capture_step(time.time())
    backend.script(MSG, Behaviour(503))
    assert relay.deliver_step(1.0).kind == "retry"
    write(writer, BOB, *(f"bob {i}" for i in range(20)))
    relay.capture_step(time.time())
    for _ in range(21):
        assert relay.deliver_step(10.0).kind == "delivered"
    order = texts(backend.messages())
    assert order.index("alice") <= 1
    assert [t for t in order if t != "alice"] == [f"bob {i}" for i in range(20)]
