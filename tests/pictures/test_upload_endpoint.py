"""`POST /photo/upload`: the multipart request as the backend's loopback stand-in parses it."""

from __future__ import annotations

import json

from archety_relay.backend.client import Backend
from archety_relay.config import Settings
from archety_relay.demo.stub_backend import Behaviour, StubBackend

JPEG = b"\xff\xd8\xff\xe0 pretend jpeg \r\n--not-a-boundary\r\n \xff\xd9"
FIELDS = {
    "attachment_guid": "AT-1",
    "message_guid": "MSG-1",
    "chat_guid": "iMessage;-;+15555550101",
    "caption": "look 👀",
    "participants": json.dumps(["+15555550101"]),
}


def test_upload_is_multipart_with_fields_file_and_headers(
    settings: Settings, backend: StubBackend, secret: str
) -> None:
    """Text fields and the file part arrive intact (bytes, name, type), with the Bearer secret,
    the agent id and the attachment guid as Idempotency-Key; the answer carries photo_id."""
    client = Backend.from_settings(settings)
    try:
        outcome = client.upload_photo(FIELDS, "AT-1.jpg", JPEG, "image/jpeg", "AT-1")
    finally:
        client.close()
    assert outcome.ok and json.loads(outcome.body)["photo_id"] == "photo-1"
    (upload,) = backend.uploads()
    assert upload.body == FIELDS
    part = upload.files["file"]
    assert (part.filename, part.content_type, part.data) == ("AT-1.jpg", "image/jpeg", JPEG)
    headers = upload.headers
    assert headers["Authorization"] == f"Bearer {secret}"
    assert headers["Idempotency-Key"] == "AT-1"
    assert headers["X-Edge-Agent-Id"] == "test-agent"
    assert headers["User-Agent"] == "Archety-Edge-Client/test-agent"
    assert headers["Content-Type"].startswith("multipart/form-data; boundary=")


def test_upload_failures_are_values(settings: Settings, backend: StubBackend) -> None:
    """413 and 503 come back as statuses to decide on; a repeated key gets the same photo_id."""
    backend.script("/photo/upload", Behaviour(413), Behaviour(503, headers={"Retry-After": "7"}))
    client = Backend.from_settings(settings)
    try:
        too_big = client.upload_photo(FIELDS, "AT-1.jpg", JPEG, "image/jpeg", "AT-1")
        busy = client.upload_photo(FIELDS, "AT-1.jpg", JPEG, "image/jpeg", "AT-1")
        first = client.upload_photo(FIELDS, "AT-1.jpg", JPEG, "image/jpeg", "AT-1")
        again = client.upload_photo(FIELDS, "AT-1.jpg", JPEG, "image/jpeg", "AT-1")
    finally:
        client.close()
    assert (too_big.status, busy.status, busy.retry_after) == (413, 503, 7.0)
    assert json.loads(first.body)["photo_id"] == json.loads(again.body)["photo_id"]
    assert len(backend.uploads()) == 2
