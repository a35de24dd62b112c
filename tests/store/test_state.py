"""The state database's own queries: what they return, and that they stay cheap as it grows.

Costs are asserted by SQLite's query plan, never by a clock (figures go to the commit message
and bench/): a plan that runs a subquery per row is quadratic whatever the machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ALICE, RelayProcess, log_events, run_cli, wait_until

from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.errors import OutboxCorrupt
from archety_relay.relay import Relay
from archety_relay.store import OUTBOX_FILE, Cursor, NewOutgoing, Store, open_store
from archety_relay.store.commands import CHAT_STATE_MEMORY_SECONDS

SYNC = "/edge/sync"


def _plan_of(store: Store, call: object) -> list[str]:
    """The query plan of every statement `call` runs on the store's connection."""
    statements: list[str] = []
    conn = store._conn
    conn.set_trace_callback(statements.append)
    try:
        call()  # type: ignore[operator]
    finally:
        conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT"):
            plans += [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    return plans


def test_heads_due_gives_each_chats_earliest_unsent_row_when_due(tmp_path: Path) -> None:
    """One head per chat, in send order; a chat whose head is not due yet is not overtaken by
    its later rows; finished rows are ignored."""
    store = open_store(tmp_path)
    now = time.time()
    a, b, c = (f"iMessage;-;+1555000000{i}" for i in (1, 2, 3))
    ids = store.add_outgoing(
        [
            NewOutgoing(a, "a1", now - 5, "reply"),
            NewOutgoing(a, "a2", now - 9, "reply"),  # earlier send_at: a's head
            NewOutgoing(b, "b1", now + 60, "schedule_message"),  # b's head, not due
            NewOutgoing(b, "b2", now + 90, "schedule_message"),
            NewOutgoing(c, "c1", now - 1, "reply"),
        ],
        now,
    )
    assert [(o.chat_guid, o.text) for o in store.heads_due(now)] == [(a, "a2"), (c, "c1")]
    store.finish(store.heads_due(now)[0], "sent", now, "message_sent", {"id": ids[1]})
    assert [o.text for o in store.heads_due(now)] == ["a1", "c1"]
    assert [o.text for o in store.heads_due(now + 61)] == ["a1", "c1", "b1"]
    store.close()


def test_heads_due_is_one_pass_not_a_subquery_per_pending_row(tmp_path: Path) -> None:
    """Review #16: with thousands of pending sends the heads query must not run a correlated
    subquery per row (4,000 pending took 1.1-2.5 s, twice per dispatch step, under the lock)."""
    store = open_store(tmp_path)
    now = time.time()
    store.add_outgoing(
        [NewOutgoing(f"iMessage;-;+1555{i:07d}", "hi", now - 1, "reply") for i in range(50)],
        now,
    )
    plan = _plan_of(store, lambda: store.heads_due(now))
    assert plan, "heads_due ran no SELECT"
    assert not [step for step in plan if "CORRELATED" in step]
    store.close()


def test_the_own_send_check_reads_only_recent_sends_of_its_chat(tmp_path: Path) -> None:
    """Review 2026-12-04 #15: each own-account row chat.db gets was checked against every sent
    row of the 30 days kept (20 ms at 100,000, under the store lock). The check now reads a
    range of an index by status and time, and its work does not grow with older history; it
    still finds the relay's echo however Messages spells the chat, and only in that chat."""
    store = open_store(tmp_path)
    now = 2_000_000_000.0
    alice, bob = "iMessage;-;+15550000001", "iMessage;-;+15550000002"

    def sent(chat: str, text: str, at: float) -> None:
        (item_id,) = store.add_outgoing([NewOutgoing(chat, text, at, "reply")], at)
        (item,) = [o for o in store.heads_due(at) if o.id == item_id]
        store.finish(item, "sent", at, "message_sent", {})

    sent(alice, "on my  way", now - 60)
    assert store.is_own_send("any;-;+15550000001", "on my way", now - 600)
    assert not store.is_own_send(bob, "on my way", now - 600)

    def steps() -> int:
        count = [0]

        def tick() -> int:
            count[0] += 1
            return 0

        store._conn.set_progress_handler(tick, 1)
        try:
            store.is_own_send(bob, "not sent", now - 600)
        finally:
            store._conn.set_progress_handler(None, 1)
        return count[0]

    before = steps()
    store._conn.executemany(
        "INSERT INTO outgoing (chat_guid, text, send_at, status, origin, created_at, updated_at) "
        "VALUES (?, ?, ?, 'sent', 'reply', ?, ?)",
        [(bob, f"old {i}", now - 86400 - i, now - 86400 - i, now - 86400 - i) for i in range(3000)],
    )
    assert steps() < before * 2  # 3,000 older sends cost (next to) nothing
    plan = _plan_of(store, lambda: store.is_own_send(bob, "x", now - 600))
    assert any("outgoing_status_updated" in step and "updated_at>" in step for step in plan), plan
    store.close()


def test_old_state_is_pruned_while_every_sync_fails(
    start_relay: Callable[..., RelayProcess],
    env: dict[str, str],
    backend: StubBackend,
) -> None:
    """Review #24: with /edge/sync answering 404 for good, 30-day-old delivered guids, finished
    sends and unacknowledged events are still dropped: pruning has a timer of its own."""
    month_ago = time.time() - 30 * 86400 - 60
    store = open_store(Path(env["ARCHETY_STATE_DIR"]))
    store.enqueue([("OLD-GUID", 1, b"{}")], None, month_ago)
    store.mark_delivered(store.head(), month_ago)  # type: ignore[arg-type]
    (sent,) = store.add_outgoing([NewOutgoing("iMessage;-;+15555550101", "x", 0, "reply")], 0)
    store.finish(store.heads_due(month_ago)[0], "sent", month_ago, "message_sent", {"id": sent})
    store.close()
    backend.set_default("/edge/sync", Behaviour(404))
    relay = start_relay()
    assert wait_until(lambda: log_events(relay.log, "state_pruned"))
    assert wait_until(lambda: log_events(relay.log, "sync_failed"))
    relay.terminate()
    (pruned,) = log_events(relay.log, "state_pruned")
    assert pruned["delivered"] == 1 and pruned["history"] >= 2  # the send and its event
    store = open_store(Path(env["ARCHETY_STATE_DIR"]))
    assert store.known(["OLD-GUID"]) == set()
    assert store.outgoing_counts() == {} and store.pending_events() == []
    store.close()


def test_unacknowledged_events_cannot_starve_newer_ones(relay: Relay, backend: StubBackend) -> None:
    """Review #23: 100 `message_sent` events the backend never acknowledges, then one
    `command_completed`: the newer event still reaches the backend with the next sync, and
    every event is offered again later (nothing dropped for being unacknowledged)."""
    now = time.time()
    for i in range(100):
        relay.store.add_event("message_sent", {"message_id": i}, now)
    relay.store.add_event("command_completed", {"command_id": "c-1"}, now)
    relay.sync_step(now)
    relay.sync_step(now + 1)
    bodies = [r.body["events"] for r in backend.requests_to(SYNC)]
    assert [len(events) for events in bodies] == [100, 100]
    assert "command_completed" in [e["event_type"] for e in bodies[1]]
    offered = {e.get("message_id") for events in bodies for e in events}
    assert set(range(100)) <= offered  # the unacknowledged ones keep being offered too


def test_a_cursor_saved_by_an_older_version_is_kept_on_upgrade(tmp_path: Path) -> None:
    """A state file whose cursor table predates the guid/date columns opens, keeps its cursor,
    and stores the new fields from then on."""
    import sqlite3

    old = sqlite3.connect(tmp_path / "outbox.db")
    old.execute(
        "CREATE TABLE cursor (id INTEGER PRIMARY KEY CHECK (id = 1), rowid INTEGER NOT NULL, "
        "fingerprint TEXT NOT NULL, updated_at REAL NOT NULL)"
    )
    old.execute("INSERT INTO cursor VALUES (1, 42, '7:ABC', 0)")
    old.commit()
    old.close()
    store = open_store(tmp_path)
    assert store.cursor() == Cursor(42, "7:ABC")
    store.set_cursor(Cursor(43, "7:ABC", "GUID-43", 123), time.time())
    assert store.cursor() == Cursor(43, "7:ABC", "GUID-43", 123)
    store.close()


def _damage_header(path: Path) -> None:
    """Overwrite the 100-byte database header, as a torn write or a stray tool would."""
    with open(path, "r+b") as f:
        f.write(b"\xde\xad" * 50)


def test_a_damaged_state_file_is_reported_by_lookers_and_salvaged_by_run(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Review #11: three queued messages and a scheduled send, then the state file's header is
    damaged and a message arrives. `status`, `retry-dead` and `purge-dead` report it (exit 6)
    and change nothing; `doctor` fails its state check without moving it. `--once` moves it
    aside, carries the queue, the scheduled send and the cursor into the fresh file, delivers
    all four messages, and `status` shows the reset."""
    state = Path(env["ARCHETY_STATE_DIR"])
    chat = writer.direct_chat(ALICE)
    backend.set_default("/orchestrator/message", Behaviour(503))
    assert run_cli(["--once"], env, cwd=tmp_path).returncode in (0, 4)  # cursor placed
    for i in range(3):
        writer.message(f"queued {i}", sender=ALICE, chat=chat)
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 4  # queued, backend down
    store = open_store(state)
    send_at = time.time() + 3600
    store.add_outgoing(
        [NewOutgoing(f"iMessage;-;{ALICE}", "later", send_at, "schedule_message", "cmd-1")],
        time.time(),
    )
    assert store.stats().depth == 3
    store.close()
    _damage_header(state / OUTBOX_FILE)
    writer.message("arrived meanwhile", sender=ALICE, chat=chat)
    backend.set_default("/orchestrator/message", None)

    for command in (["status"], ["retry-dead"], ["purge-dead"]):
        looked = run_cli(command, env, cwd=tmp_path)
        assert looked.returncode == 6, (command, looked.stdout, looked.stderr)
        assert "--once" in looked.stderr
    doctor = run_cli(["doctor"], env, cwd=tmp_path)
    assert "✗ state directory" in doctor.stdout and doctor.returncode != 0
    assert "--once" in doctor.stdout and "free some space" not in doctor.stdout
    assert not list(state.glob("outbox.db.corrupt-*"))

    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    assert [r.body["text"] for r in backend.messages()] == [
        "queued 0",
        "queued 1",
        "queued 2",
        "arrived meanwhile",
    ]
    (aside,) = [p for p in state.glob("outbox.db.corrupt-*") if p.suffix != ".db-wal"]
    store = open_store(state)
    assert [(o.text, o.status) for o in store.scheduled(None)] == [("later", "pending")]
    store.close()
    status = json.loads(run_cli(["status", "--json"], env, cwd=tmp_path).stdout)
    assert status["state_reset"]["moved_to"] == str(aside)
    assert status["state_reset"]["salvaged"]["outbox"] == 3
    human = run_cli(["status"], env, cwd=tmp_path).stdout
    assert "state reset" in human and str(aside) in human


def _queue_ids(store: Store) -> dict[str, int]:
    return {
        guid: id_
        for id_, guid in store._conn.execute("SELECT id, message_guid FROM outbox").fetchall()
    }


def test_retry_dead_after_a_salvage_puts_every_dead_letter_back(tmp_path: Path) -> None:
    """Review 2026-12-04 #5 (salvage_deadletter_loss): two messages delivered and a third
    dead-lettered (outbox id 3), then the state file is damaged and salvaged. New messages
    must not reuse ids 1-3, and `retry-dead` must put G-3 back, not delete it."""
    store = open_store(tmp_path)
    now = time.time()
    store.enqueue([(f"G-{i}", i, b"{}") for i in (1, 2, 3)], Cursor(3, "1:X"), now)
    for _ in range(2):
        item = store.head()
        assert item is not None
        store.mark_delivered(item, now)
    g3 = store.head()
    assert g3 is not None and g3.id == 3
    store.dead_letter(g3, 422, "refused", now)
    store.close()
    _damage_header(tmp_path / OUTBOX_FILE)
    store = open_store(tmp_path, repair=True)
    assert [d.message_guid for d in store.dead_letters()] == ["G-3"]
    store.enqueue([(f"N-{i}", 3 + i, b"{}") for i in (1, 2, 3)], Cursor(6, "1:X"), now)
    assert min(_queue_ids(store).values()) > 3
    assert store.retry_dead(now) == 1
    assert store.dead_letters() == []
    assert _queue_ids(store)["G-3"] == 3  # back at its old place, ahead of N-1..3
    store.close()


def test_retry_dead_never_deletes_a_dead_letter_whose_old_place_is_taken(tmp_path: Path) -> None:
    """A state file salvaged by an older version may already hold a newer message at a dead
    letter's old outbox id: the dead letter is put back under a new id, never dropped."""
    store = open_store(tmp_path)
    now = time.time()
    store.enqueue([("G-1", 1, b"{}")], Cursor(1, "1:X"), now)
    g1 = store.head()
    assert g1 is not None
    store.dead_letter(g1, 422, "refused", now)
    store._conn.execute(
        "INSERT INTO outbox (id, message_guid, source_rowid, body, enqueued_at) "
        "VALUES (?, 'N-1', 2, x'7b7d', ?)",
        (g1.id, now),
    )
    assert store.retry_dead(now) == 1
    assert store.dead_letters() == []
    assert sorted(_queue_ids(store)) == ["G-1", "N-1"]
    store.close()


def _set_context(store: Store, keys: list[str], context: dict | None, at: float) -> None:
    with store.command(f"cmd-{at}-{keys[0]}", at) as tx:
        assert tx is not None
        tx.set_context(keys, context)


def _chat_state_rows(store: Store) -> int:
    return int(store._conn.execute("SELECT COUNT(*) FROM chat_state").fetchone()[0])


def test_chat_state_is_pruned_once_reset_or_left_alone(tmp_path: Path) -> None:
    """Review 2026-12-04 #16 (chat_state_growth): contexts set and then reset for 300 chats are
    gone after a prune far enough ahead; a context nobody touches expires after
    CHAT_STATE_MEMORY_SECONDS."""
    store = open_store(tmp_path)
    now = time.time()
    for i in range(300):
        _set_context(store, [f"chat{i}"], {"active_miniapp": "trivia" * 100}, now)
        _set_context(store, [f"chat{i}"], None, now + 1)
    _set_context(store, ["kept"], {"active_miniapp": "poll"}, now)
    store.prune(now + 400 * 86400)
    assert _chat_state_rows(store) == 0
    _set_context(store, ["recent"], {"active_miniapp": "poll"}, now)
    store.prune(now + CHAT_STATE_MEMORY_SECONDS - 60)
    assert set(store.chat_states(["recent"])) == {"recent"}
    store.prune(now + CHAT_STATE_MEMORY_SECONDS + 60)
    assert store.chat_states(["recent"]) == {}
    store.close()


def test_pruning_chat_state_never_brings_back_a_context_that_was_reset(tmp_path: Path) -> None:
    """A chat known by two keys: its context set under both, reset later under one. Pruning the
    old setting must not leave the older context to win again: the reset outlives it."""
    store = open_store(tmp_path)
    now = time.time()
    _set_context(store, ["iMessage;-;+15555550101", "+15555550101"], {"active_miniapp": "x"}, now)
    _set_context(store, ["+15555550101"], None, now + 10 * 86400)
    store.prune(now + CHAT_STATE_MEMORY_SECONDS + 86400)
    states = store.chat_states(["iMessage;-;+15555550101", "+15555550101"])
    assert all(s.context is None for s in states.values())
    store.close()


def test_chat_state_is_capped_by_size_keeping_the_newest(tmp_path: Path) -> None:
    """Many large contexts: past the size cap the oldest settings go, the newest stay."""
    store = open_store(tmp_path)
    now = time.time()
    for i in range(50):
        _set_context(store, [f"chat{i}"], {"active_miniapp": "a" * 1000}, now + i)
    store.prune_chat_state(now + 60, max_bytes=20_000)
    kept = store.chat_states([f"chat{i}" for i in range(50)])
    assert 10 <= len(kept) < 20
    assert set(kept) == {f"chat{i}" for i in range(50 - len(kept), 50)}
    store.close()


def test_a_context_command_and_a_message_read_only_their_own_chat_state(
    relay: Relay, store: Store, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Review #16: with thousands of chats' context stored, a context_update and a captured
    message read their own chat's rows by key, never the whole table (by the query plan); the
    message still carries the context just set."""
    now = time.time()
    for i in range(0, 3000, 500):
        with store.command(f"fill-{i}", now) as tx:
            assert tx is not None
            for k in range(i, i + 500):
                tx.set_context([f"chat{k}"], {"active_miniapp": "trivia"})
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    context = {"chat_guid": f"iMessage;-;{ALICE}", "app_id": "poll", "state": "active"}
    backend.script(
        SYNC,
        Behaviour(
            body={
                "commands": [
                    {"command_id": "c-1", "command_type": "context_update", "params": context}
                ]
            }
        ),
    )
    writer.message("which option?", sender=ALICE, chat=chat)
    plans = _plan_of(store, lambda: (relay.sync_step(time.time()), relay.capture_step(time.time())))
    assert plans and not [p for p in plans if "SCAN chat_state" in p]
    relay.deliver_step(time.monotonic())
    [posted] = [r.body for r in backend.messages()]
    assert posted["context"]["active_miniapp"] == "poll"


def test_an_interrupted_repair_is_simply_done_again(tmp_path: Path) -> None:
    """The fresh file is built beside the damaged one and swapped in last: a repair killed
    half-way leaves the damaged file in place and a stale staging file, and the next start
    repairs from scratch with nothing lost. Without `repair` nothing is touched."""
    store = open_store(tmp_path)
    store.enqueue([("G-1", 1, b"{}")], Cursor(1, "1:X"), time.time())
    store.close()
    _damage_header(tmp_path / OUTBOX_FILE)
    (tmp_path / (OUTBOX_FILE + ".salvaging")).write_bytes(b"half-built" * 1000)
    with pytest.raises(OutboxCorrupt):
        open_store(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUTBOX_FILE, OUTBOX_FILE + ".salvaging"]
    store = open_store(tmp_path, repair=True)
    assert store.stats().depth == 1 and store.cursor() == Cursor(1, "1:X")
    store.close()
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert names[0] == OUTBOX_FILE and names[1].startswith(OUTBOX_FILE + ".corrupt-")
    assert len(names) == 2
