"""A scheduled message's files show in `list_scheduled` (issue #19): each file by its name and
type under the schedule_id of the command it came with, and never by its URL.

Through the real command path: the stand-in backend answers a sync with `schedule_message` and
`list_scheduled`, and the test reads the events the next syncs carried to it.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from conftest import ALICE

from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.relay import Relay

SYNC = "/edge/sync"
CHAT = f"iMessage;-;{ALICE}"
SIGNATURE = "X-Amz-Signature=5ec2e7c0ffee"


def _sync_answering(relay: Relay, backend: StubBackend, *commands: dict[str, Any]) -> None:
    """One sync whose answer carries `commands`, then one that carries their events out."""
    backend.script(SYNC, Behaviour(body={"commands": list(commands)}))
    relay.sync_step(time.time())
    relay.sync_step(time.time())


def _result(backend: StubBackend, command_id: str) -> dict[str, Any]:
    return next(e for e in backend.sync_events() if e.get("command_id") == command_id)


def test_list_scheduled_shows_each_file_under_its_schedule_and_never_its_url(
    relay: Relay, backend: StubBackend
) -> None:
    """schedule_message with a text and two files (one named by the backend, one a signed URL
    with no name): list_scheduled lists three rows, all under the schedule_id the command got;
    each file row has `attachments: [{filename, mime_type}]`; no event the backend received
    carries the URLs or their signature. Cancelling that schedule_id cancels all three."""
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    named = f"https://files.example.com/menus/menu.pdf?{SIGNATURE}"
    unnamed = f"https://files.example.com/p/8f3a?{SIGNATURE}&X-Amz-Credential=AKIA"
    _sync_answering(
        relay,
        backend,
        {
            "command_id": "s-1",
            "command_type": "schedule_message",
            "params": {
                "chat_guid": CHAT,
                "message_text": "tonight's menu",
                "send_at": tomorrow,
                "attachments": [
                    {"url": named, "filename": "menu.pdf", "mime_type": "application/pdf"},
                    {"url": unnamed},
                ],
            },
        },
        {"command_id": "l-1", "command_type": "list_scheduled", "params": {}},
    )
    schedule_id = _result(backend, "s-1")["details"]["schedule_id"]
    listed = _result(backend, "l-1")["details"]["scheduled"]
    assert [(i["schedule_id"], i["text"], i.get("attachments")) for i in listed] == [
        (schedule_id, "tonight's menu", None),
        (schedule_id, "", [{"filename": "menu.pdf", "mime_type": "application/pdf"}]),
        (schedule_id, "", [{"filename": None, "mime_type": None}]),
    ]
    assert len({i["message_id"] for i in listed}) == 3
    carried = json.dumps([r.body for r in backend.requests_to(SYNC)])
    assert SIGNATURE not in carried and "files.example.com" not in carried

    _sync_answering(
        relay,
        backend,
        {
            "command_id": "c-1",
            "command_type": "cancel_scheduled",
            "params": {"schedule_id": schedule_id},
        },
        {"command_id": "l-2", "command_type": "list_scheduled", "params": {"status": "cancelled"}},
    )
    cancelled = _result(backend, "l-2")["details"]["scheduled"]
    assert [i["schedule_id"] for i in cancelled] == [schedule_id] * 3
    assert relay.store.files_waiting() == 0
