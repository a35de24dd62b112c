"""New rows that are more than a message: reactions, group changes, the persona's account used
elsewhere, inline replies, link previews, and old rows (iCloud back-fill vs a late message).

Rows are written the way Messages.app writes them; the relay's steps run; the assertions are
on what the loopback backend received: message bodies and `/edge/sync` events.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import ALICE, BOB, FakeOsascript, relay_life, run_cli

from archety_relay.backend.commands import SendNow
from archety_relay.capture import lateness
from archety_relay.capture.events import URL_BALLOON
from archety_relay.capture.new_rows import SKIP_EVENTS_PER_STEP
from archety_relay.chatdb.reader import ChatDb
from archety_relay.chatdb.rows import apple_date
from archety_relay.config import Settings
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay


def relay_all(relay: Relay, now: float | None = None) -> Any:
    result = relay.capture_step(time.time() if now is None else now)
    while relay.deliver_step(time.monotonic()).kind == "delivered":
        pass
    return result


def relay_gathered(relay: Relay, now: float | None = None) -> Any:
    """Capture, then capture again once old rows have waited for the rest of their bunch."""
    t0 = time.time() if now is None else now
    first = relay.capture_step(t0)
    return first.skipped + relay_all(relay, t0 + lateness.BUNCH_WAIT_SECONDS + 0.1).skipped


def bodies(backend: StubBackend) -> list[dict[str, Any]]:
    return [r.body for r in backend.messages()]


def synced(relay: Relay, backend: StubBackend, *types: str) -> list[dict[str, Any]]:
    relay.sync_step(time.time())
    events = backend.requests_to("/edge/sync")[-1].body["events"]
    return [e for e in events if not types or e["event_type"] in types]


# -- reactions ----------------------------------------------------------------------------------


def test_reactions_added_and_removed_with_kind_emoji_and_target(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Tapbacks (love, an emoji reaction, a sticker, a removal) are events naming the target
    message and part, never messages."""
    chat = writer.group_chat("chat77", [ALICE, BOB])
    relay_all(relay)
    target = writer.message("dinner at 8?", sender=ALICE, chat=chat)
    writer.reaction(target, 2000, sender=BOB, chat=chat)
    writer.reaction(target, 2006, sender=ALICE, chat=chat, emoji="🎉", part=1)
    writer.reaction(target, 2007, sender=BOB, chat=chat)
    writer.reaction(target, 3000, sender=BOB, chat=chat)
    relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == ["dinner at 8?"]
    events = synced(relay, backend, "reaction_added", "reaction_removed")
    target_guid = writer.guid_of(target)
    assert [
        (e["event_type"], e["details"]["kind"], e["details"]["emoji"], e["details"]["sender"])
        for e in events
    ] == [
        ("reaction_added", "love", None, BOB),
        ("reaction_added", "emoji", "🎉", ALICE),
        ("reaction_added", "sticker", None, BOB),
        ("reaction_removed", "love", None, BOB),
    ]
    assert {e["message_guid"] for e in events} == {target_guid}
    assert {e["chat_guid"] for e in events} == {"iMessage;+;chat77"}
    assert [e["details"]["part"] for e in events] == [0, 1, 0, 0]
    assert all(e["details"]["reaction_guid"] != target_guid for e in events)


def test_every_associated_message_type_is_classified(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Types 2 and 3 are ordinary messages; 1000 (a sticker placed on a message) is a reaction
    event; 4000 (a poll vote) is skipped as such, and none of them leaks as a message."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    target = writer.message("pick a day", sender=ALICE, chat=chat)
    writer.message("app message", sender=ALICE, chat=chat, associated_message_type=2)
    writer.message("payload message", sender=ALICE, chat=chat, associated_message_type=3)
    writer.message("sticker", sender=ALICE, chat=chat, associated_message_type=1000)
    writer.message("voted", sender=ALICE, chat=chat, associated_message_type=4000)
    result = relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == ["pick a day", "app message", "payload message"]
    assert result.skipped == {"sticker_placed": 1, "poll_vote": 1}
    [sticker] = synced(relay, backend, "reaction_added")
    assert sticker["details"]["kind"] == "sticker"
    assert target  # the 1000 row written above names no target: the event still says what it is


# -- group changes ------------------------------------------------------------------------------


def test_group_changes_become_events(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Member added/removed, someone left, a rename and a new photo: one event each, with who
    did it; none is posted as a message."""
    carol = "+15555550103"
    chat = writer.group_chat("chat88", [ALICE, BOB])
    relay_all(relay)
    writer.group_action(chat, item_type=1, action=0, sender=ALICE, other=carol)
    writer.group_action(chat, item_type=1, action=1, sender=ALICE, other=BOB)
    writer.group_action(chat, item_type=3, action=0, sender=carol)
    writer.group_action(chat, item_type=2, sender=ALICE, title="Dinner crew")
    writer.group_action(chat, item_type=3, action=1, sender=ALICE)
    relay_all(relay)
    assert bodies(backend) == []
    events = synced(relay, backend)
    assert [(e["event_type"], e["details"]) for e in events] == [
        ("participant_added", {"by": ALICE, "handle": carol}),
        ("participant_removed", {"by": ALICE, "handle": BOB}),
        ("participant_left", {"by": carol, "handle": carol}),
        ("group_renamed", {"by": ALICE, "name": "Dinner crew"}),
        ("group_photo_changed", {"by": ALICE, "removed": False}),
    ]
    assert {e["chat_guid"] for e in events} == {"iMessage;+;chat88"}


# -- the persona's own messages -----------------------------------------------------------------


def test_persona_account_used_elsewhere_is_reported_but_the_relays_own_send_is_not(
    relay: Relay, writer: MessagesWriter, backend: StubBackend, osascript: FakeOsascript
) -> None:
    """An is_from_me row the relay did not send is `message_sent_elsewhere`; the relay's own
    send is `message_sent` carrying the Apple guid of the row Messages wrote."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    now = time.time()
    relay.outbound.execute(SendNow("s1", f"iMessage;-;{ALICE}", "from the relay"), now)
    relay.outbound.dispatch_step(now)
    writer.message("typed on the iPhone", sender=None, chat=chat, is_from_me=1)
    relay_all(relay)
    assert bodies(backend) == []
    elsewhere = synced(relay, backend, "message_sent_elsewhere")
    assert [e["details"]["text"] for e in elsewhere] == ["typed on the iPhone"]
    [sent] = synced(relay, backend, "message_sent")
    own_guid = writer.conn.execute(
        "SELECT guid FROM message WHERE text = 'from the relay'"
    ).fetchone()[0]
    assert sent["message_guid"] == own_guid


def test_an_empty_own_row_in_no_chat_is_not_a_send_from_elsewhere(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """macOS 26 can leave an empty is_from_me row in no chat after a failed send: it is
    Messages' trace, not the persona's account used elsewhere."""
    writer.direct_chat(ALICE)
    relay_all(relay)
    writer.message(None, sender=None, chat=None, is_from_me=1)
    t0 = time.time()
    relay.capture_step(t0)
    relay.capture_step(t0 + relay.settings.chat_join_wait + 0.1)
    assert synced(relay, backend, "message_sent_elsewhere") == []


# -- messages that carry more -------------------------------------------------------------------


def test_inline_reply_carries_its_original(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """`reply_to` comes from thread_originator_guid/part (not reply_to_guid), with the
    original's text and sender."""
    chat = writer.group_chat("chat99", [ALICE, BOB])
    relay_all(relay)
    original = writer.message("who's bringing wine?", sender=BOB, chat=chat)
    writer.message("unrelated", sender=BOB, chat=chat)
    writer.message(
        "me!",
        sender=ALICE,
        chat=chat,
        columns={
            "thread_originator_guid": writer.guid_of(original),
            "thread_originator_part": "0:0:20",
            "reply_to_guid": "PREVIOUS-MESSAGE-GUID",
        },
    )
    relay_all(relay)
    reply = bodies(backend)[-1]
    assert reply["text"] == "me!"
    assert reply["reply_to"] == {
        "message_guid": writer.guid_of(original),
        "part": 0,
        "text": "who's bringing wine?",
        "sender": BOB,
    }
    assert "reply_to" not in bodies(backend)[0]


def test_link_with_its_preview_row_is_posted_once(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Messages writes a link as a text row plus a URL balloon row: one message goes out; a
    URL sent alone (balloon row only) still does."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    writer.message("look at https://example.com/a", sender=ALICE, chat=chat)
    preview = {"balloon_bundle_id": URL_BALLOON}
    writer.message("https://example.com/a", sender=ALICE, chat=chat, columns=preview)
    writer.message("https://example.com/b", sender=ALICE, chat=chat, columns=preview)
    result = relay_all(relay)
    assert [b["text"] for b in bodies(backend)] == [
        "look at https://example.com/a",
        "https://example.com/b",
    ]
    assert result.skipped == {"url_preview": 1}


# -- back-fill or late --------------------------------------------------------------------------


def test_icloud_backfill_bunch_is_skipped_and_counted(
    relay: Relay,
    writer: MessagesWriter,
    backend: StubBackend,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Thirty rows dated hours ago arriving together in a chat with nothing newer: history being
    restored. None is posted; each is skipped as `backfill` and `status` counts them."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    old = time.time() - 3 * 3600
    for i in range(30):
        writer.message(f"history {i}", sender=ALICE, chat=chat, sent_at=old + i * 60)
    skipped = relay_gathered(relay)
    assert bodies(backend) == []
    assert skipped == {"backfill": 30}
    status = run_cli(["status", "--json"], env, cwd=tmp_path)
    assert status.returncode == 0
    assert json.loads(status.stdout)["skipped_backfill"] == 30


def test_backfill_committed_a_row_at_a_time_is_still_one_bunch(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Old rows committed one by one, with a capture after each: the first rows wait for the
    rest, so the bunch is counted whole and none of it is posted."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    old = time.time() - 5 * 3600
    t = time.time()
    for i in range(lateness.BUNCH_SIZE + 2):
        writer.message(f"restored {i}", sender=ALICE, chat=chat, sent_at=old + i)
        relay_all(relay, t + i * 0.1)
    relay_all(relay, t + lateness.BUNCH_WAIT_SECONDS + 2)
    assert bodies(backend) == []


def test_old_row_behind_the_conversation_or_already_read_is_backfill(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """One old row landing behind newer messages of its chat, or already read, is history."""
    chat = writer.direct_chat(ALICE)
    writer.message("said just now", sender=ALICE, chat=chat)
    relay_all(relay)
    writer.message("said an hour ago", sender=ALICE, chat=chat, sent_at=time.time() - 3600)
    other = writer.direct_chat(BOB)
    writer.message(
        "read elsewhere", sender=BOB, chat=other, sent_at=time.time() - 600, columns={"is_read": 1}
    )
    skipped = relay_gathered(relay)
    assert bodies(backend) == []
    assert skipped == {"backfill": 2}


def test_lone_late_message_is_posted_with_its_delay(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The Mac was offline for twenty minutes: the message it missed is still a message, posted
    with delayed_s; so is a busy group's catch-up after a short outage."""
    chat = writer.direct_chat(ALICE)
    group = writer.group_chat("chat55", [ALICE, BOB])
    writer.message("before the outage", sender=ALICE, chat=chat, sent_at=time.time() - 3600)
    relay_all(relay)
    now = time.time()
    writer.message("are you there?", sender=ALICE, chat=chat, sent_at=now - 1200)
    for i in range(lateness.BUNCH_SIZE + 2):
        writer.message(f"group {i}", sender=BOB, chat=group, sent_at=now - 900 + i)
    relay_gathered(relay, now)
    posted = bodies(backend)
    assert len(posted) == lateness.BUNCH_SIZE + 3
    assert posted[0]["text"] == "are you there?" and 1200 <= posted[0]["delayed_s"] <= 1203
    assert all(900 - 20 <= b["delayed_s"] <= 903 for b in posted[1:])


def test_late_message_behind_the_persona_reply_and_a_later_message_is_posted(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The review's late_dropped case: B (2 min 20 s late) is posted, the persona answers, then
    A arrives, older than both and unread (APNs delivered it after the message that followed
    it). A is a person's message, not history: it is posted with delayed_s."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    now = time.time()
    writer.message("B: and bring the charger", sender=ALICE, chat=chat, sent_at=now - 140)
    relay_all(relay, now)
    writer.message("sure, on my way", sender=None, chat=chat, is_from_me=1)
    writer.message(
        "A: can you pick me up at 6? I'm at the hospital",
        sender=ALICE,
        chat=chat,
        sent_at=now - 150,
    )
    skipped = relay_all(relay, now + 1).skipped
    posted = bodies(backend)
    assert [b["text"] for b in posted] == [
        "B: and bring the charger",
        "A: can you pick me up at 6? I'm at the hospital",
    ]
    assert 150 <= posted[1]["delayed_s"] <= 153
    assert skipped["backfill"] == 0


def test_an_old_row_behind_only_the_persona_own_messages_is_late_not_history(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Only incoming messages make a row "history landing behind the conversation": a row two
    hours old whose chat holds nothing newer but the persona's own messages is posted late."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    writer.message("did you get my voicemail?", sender=None, chat=chat, is_from_me=1)
    writer.message("call me when you land", sender=ALICE, chat=chat, sent_at=time.time() - 7200)
    relay_gathered(relay)
    [posted] = bodies(backend)
    assert posted["text"] == "call me when you land" and posted["delayed_s"] >= 7200


def test_a_reinserted_copy_of_a_recent_message_is_backfill(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A row with a new guid but the sender and the exact date of a message its chat already
    holds is a re-inserted copy (iCloud keeps the original's date): not posted twice."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    sent_at = time.time() - 600
    writer.message("running late", sender=ALICE, chat=chat, sent_at=sent_at)
    relay_all(relay)
    writer.message("running late", sender=ALICE, chat=chat, sent_at=sent_at)
    skipped = relay_all(relay).skipped
    assert [b["text"] for b in bodies(backend)] == ["running late"]
    assert skipped["backfill"] == 1


def test_every_skipped_message_is_reported_to_the_backend(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A person's message the relay passes without posting (history restored, too old) is a
    `message_skipped` event at /edge/sync naming it, its chat, sender and why; the persona's
    own rows and reactions are not."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    read = writer.message(
        "seen on the phone",
        sender=ALICE,
        chat=chat,
        sent_at=time.time() - 900,
        columns={"is_read": 1},
    )
    ancient = writer.message(
        "from last week", sender=ALICE, chat=chat, sent_at=time.time() - 7 * 86400
    )
    writer.message("ok", sender=None, chat=chat, is_from_me=1, sent_at=time.time() - 7 * 86400)
    relay_gathered(relay)
    assert bodies(backend) == []
    events = synced(relay, backend, "message_skipped")
    by_guid = {e["message_guid"]: e for e in events}
    assert set(by_guid) == {writer.guid_of(read), writer.guid_of(ancient)}
    seen = by_guid[writer.guid_of(read)]
    assert seen["chat_guid"] == f"iMessage;-;{ALICE}"
    assert seen["details"]["reason"] == "backfill"
    assert seen["details"]["sender"] == ALICE
    assert seen["details"]["text"] == "seen on the phone"
    assert 900 <= seen["details"]["age_s"] <= 905
    assert by_guid[writer.guid_of(ancient)]["details"]["reason"] == "too_old"


def test_a_restored_history_is_reported_without_a_flood_of_events(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """300 rows of restored history in one step: each is accounted for, but beyond the first
    SKIP_EVENTS_PER_STEP the rest are counted in one summary event, not one event each."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    old = time.time() - 3 * 3600
    writer.burst([f"history {i}" for i in range(300)], sender=ALICE, chat=chat)
    writer.conn.execute("UPDATE message SET date = ? + ROWID * 1000000000", (apple_date(old),))
    writer.conn.execute(
        "UPDATE chat_message_join SET message_date = "
        "(SELECT date FROM message WHERE ROWID = message_id)"
    )
    relay_gathered(relay)
    assert bodies(backend) == []
    relay.sync_step(time.time())
    events = [e for e in backend.sync_events() if e["event_type"] == "message_skipped"]
    singles = [e for e in events if e["message_guid"]]
    [summary] = [e for e in events if not e["message_guid"]]
    assert len(singles) == SKIP_EVENTS_PER_STEP
    assert summary["details"]["count"] == 300 - SKIP_EVENTS_PER_STEP
    assert summary["details"]["reasons"] == {"backfill": 300 - SKIP_EVENTS_PER_STEP}


def test_fresh_message_has_no_delay_field(
    relay: Relay, writer: MessagesWriter, backend: StubBackend
) -> None:
    """A message relayed as it arrives carries no delayed_s."""
    chat = writer.direct_chat(ALICE)
    relay_all(relay)
    writer.message("hi", sender=ALICE, chat=chat)
    relay_all(relay)
    assert "delayed_s" not in bodies(backend)[0]


def test_the_rule_on_its_own() -> None:
    """Each signal of the back-fill rule, and the late side, as the pure verdict sees them."""
    a = lateness.Arrival
    assert lateness.verdict(a(30, 1, True, True)) is None  # fresh: nothing to judge
    assert lateness.verdict(a(1200, 1, False, False)) == "late"
    assert lateness.verdict(a(1200, 1, False, True)) == "backfill"
    # Behind a newer incoming message: history only when older than the floor (review #2).
    assert lateness.verdict(a(1200, 1, True, False)) == "late"
    assert lateness.verdict(a(7200, 1, True, False)) == "backfill"
    assert lateness.verdict(a(1200, 1, True, False, twin=True)) == "backfill"
    assert lateness.verdict(a(1200, 50, False, False)) == "late"  # a catch-up, minutes old
    assert lateness.verdict(a(7200, 50, False, False)) == "backfill"
    assert lateness.verdict(a(7200, 2, False, False)) == "late"


def test_reaction_survives_a_restart_before_its_sync_and_is_reported_once(
    settings: Settings, writer: MessagesWriter, backend: StubBackend
) -> None:
    """The reaction event is stored with the cursor move: a relay stopped before any sync
    reports it after the restart, once, and a second restart reports nothing new."""
    chat = writer.direct_chat(ALICE)
    target = writer.message("hi", sender=ALICE, chat=chat)
    backend.ack_events = True

    relay_life(settings, lambda r: r.capture_step(time.time()))  # cursor placed after "hi"
    writer.reaction(target, 2001, sender=ALICE, chat=chat)
    relay_life(
        settings, lambda r: r.capture_step(time.time())
    )  # event stored; stopped before any sync
    relay_life(settings, lambda r: (r.capture_step(time.time()), r.sync_step(time.time())))
    relay_life(settings, lambda r: (r.capture_step(time.time()), r.sync_step(time.time())))
    reactions = [e for e in backend.sync_events() if e["event_type"] == "reaction_added"]
    assert len(reactions) == 1
    assert reactions[0]["details"]["kind"] == "like"


def test_daemon_syncs_soon_after_a_reaction(
    start_relay: Any, writer: MessagesWriter, backend: StubBackend
) -> None:
    """With an hour between scheduled syncs, a tapback still reaches the backend promptly: the
    capture that stored it asks the timer for a sync."""
    chat = writer.direct_chat(ALICE)
    relay = start_relay({"ARCHETY_SYNC_INTERVAL": "3600"})
    assert backend.wait_for(lambda b: len(b.requests_to("/edge/sync")) >= 1, 10)
    target = writer.message("pizza?", sender=ALICE, chat=chat)
    assert backend.wait_for_messages(1)
    writer.reaction(target, 2003, sender=ALICE, chat=chat)

    def laughed(b: StubBackend) -> bool:
        return any(e["event_type"] == "reaction_added" for e in b.sync_events())

    assert backend.wait_for(laughed, 10)
    relay.terminate()
    [event] = [e for e in backend.sync_events() if e["event_type"] == "reaction_added"]
    assert (event["details"]["kind"], event["message_guid"]) == ("laugh", writer.guid_of(target))


def test_the_late_row_lookups_walk_the_chat_date_index(
    writer: MessagesWriter, settings: Settings
) -> None:
    """What a late row's chat already held is read through the (chat_id, message_date)
    index and message ROWIDs: no statement scans a table, however long the history."""
    chat = writer.direct_chat(ALICE)
    rowid = writer.message("hi", sender=ALICE, chat=chat)
    chatdb = ChatDb(settings.chat_db)
    chatdb.max_rowid()
    conn = chatdb._conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    chatdb.chat_ahead(chat, 0, rowid, "hi")
    conn.set_trace_callback(None)
    plans = [
        row[-1]
        for sql in statements
        if sql.lstrip().upper().startswith("SELECT")
        for row in conn.execute("EXPLAIN QUERY PLAN " + sql)
    ]
    chatdb.close()
    assert len([p for p in plans if "chat_message_join_idx_message_date_id_chat_id" in p]) == 2
    assert not [p for p in plans if p.startswith("SCAN")]
