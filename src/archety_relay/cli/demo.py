"""`archety-relay demo`: the whole path on this machine, no Mac and no credentials needed.

A sample chat.db from Apple's schema, a stand-in backend on 127.0.0.1 that checks the Bearer
secret and prints what it receives, the real daemon between them, and messages written the way
Messages.app writes them. The persona answers with text bubbles and one picture the stand-in
backend serves; a stand-in for Messages.app records each send in chat.db, as Messages would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from .. import config, logs
from ..chatdb import voice
from ..chatdb.guids import Target
from ..daemon import Daemon
from ..demo.address_book import AddressBookWriter
from ..demo.camera import iphone_photo, menu_card
from ..demo.messages_writer import AttachmentSpec, MessagesWriter
from ..demo.stub_backend import Behaviour, Received, StubBackend
from ..macos.messages_app import SendResult
from ..store import open_store

ALICE = "+15555550101"
BOB = "bob@example.com"
CAROL = "+15555550103"


def _show(received: Received) -> None:
    body = received.body or {}
    name = f" ({body['sender_name']}, from Contacts)" if body.get("sender_name") else ""
    kind = f" [{body['kind']}]" if body.get("kind") not in (None, "text") else ""
    print(
        f"  backend ← {body.get('mode', '?'):6} {body.get('chat_guid')}  "
        f"from {body.get('sender')}{name}{kind}: "
        f"{json.dumps(body.get('text'), ensure_ascii=False)}"
    )
    for entry in body.get("attachments") or []:
        print(
            f"            attachment {entry.get('transfer_name')}: {entry.get('status')}"
            + (f" as {entry['uploaded_photo_id']}" if entry.get("uploaded_photo_id") else "")
            + (f" ({entry['skip_reason']})" if entry.get("skip_reason") else "")
        )
        if entry.get("kind") == "voice":
            print(
                f"            voice note, {entry.get('duration_s')} s, Apple's transcript "
                f"({entry.get('transcript_source')}): "
                f"{json.dumps(entry.get('transcript'), ensure_ascii=False)}"
            )
        if entry.get("contact"):
            print(f"            contact card: {json.dumps(entry['contact'], ensure_ascii=False)}")


def _show_upload(received: Received) -> None:
    """What reached /photo/upload: the converted picture, and proof it carries no metadata."""
    part = received.files.get("file")
    if part is None:
        return
    from ..pictures.conversion import describe

    print(
        f"  backend ← /photo/upload {part.filename} {part.content_type} {describe(part.data)}, "
        f"{len(part.data) // 1024} KB (Idempotency-Key {received.headers.get('Idempotency-Key')})"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="archety-relay-demo-"))
    secret = secrets.token_hex(32)
    print(f"archety-relay demo — working in {workdir}")
    (workdir / "Messages").mkdir()
    writer = MessagesWriter(workdir / "Messages" / "chat.db")
    backend = StubBackend(secret, on_message=_show, on_upload=_show_upload).start()
    print(f"  stand-in backend on {backend.url} (checks the Bearer secret)")
    settings = config.load(
        environ={
            "RELAY_WEBHOOK_SECRET": secret,
            "ARCHETY_BACKEND_URL": backend.url,
            "ARCHETY_CHAT_DB": str(writer.path),
            "ARCHETY_STATE_DIR": str(workdir / "state"),
            "ARCHETY_LOG_FILE": str(workdir / "relay.log"),
            "EDGE_AGENT_ID": "demo-mac-mini",
            "ARCHETY_CHAT_JOIN_WAIT": "2",
            "ARCHETY_ADDRESS_BOOK_DIR": str(_address_book(workdir)),
            # A port of its own: a relay running on this Mac keeps the default one.
            "ARCHETY_METRICS_PORT": str(_free_port()),
            # The persona's sends are reported at the next sync: every 2 s here, not 5 minutes.
            "ARCHETY_SYNC_INTERVAL": "2",
        },
        cwd=workdir,
    )
    logs.configure(
        log_file=settings.log_file, console=getattr(args, "log_format", None), secrets=(secret,)
    )
    # The persona answers the first message, to show the way back through Messages.app.
    backend.script(
        "/orchestrator/message",
        Behaviour(
            body={
                "should_respond": True,
                "reflex_message": "hey! 👋",
                "burst_messages": ["give me a sec", "ok, I'm here"],
                "burst_delay_ms": 400,
            }
        ),
    )
    # ... and Alice's photo with a picture of its own, which the backend serves behind its secret.
    menu = menu_card()
    menu_url = backend.serve_file("menu.png", menu, "image/png")
    backend.respond_with(
        "/orchestrator/message",
        lambda body: (
            Behaviour(
                body={
                    "should_respond": True,
                    "reply_text": "nice! here's tonight's menu",
                    "attachments": [{"url": menu_url, "filename": "menu.png"}],
                }
            )
            if "a photo" in str((body or {}).get("text"))
            else None
        ),
    )
    replies: list[tuple[str, str]] = []
    pictures: list[Path] = []

    def would_send(target: Target, text: str, *file: str) -> SendResult:
        if file:  # the staged picture: Messages records it as the row's attachment
            pictures.append(Path(file[0]))
            shown = f"picture {Path(file[0]).name} ({Path(file[0]).stat().st_size} bytes)"
        else:
            replies.append((target.chat_guid, text))
            shown = json.dumps(text, ensure_ascii=False)
        print(f"  Messages.app → {target.chat_guid}: {shown}  (would be sent; osascript on a Mac)")
        # As Messages would, so the send confirms.
        writer.record_sent(target.chat_guid, text, Path(file[0]) if file else None)
        return SendResult(True, via="demo")

    ready = threading.Event()
    store = open_store(settings.state_dir)
    daemon = Daemon(settings, store, on_ready=ready.set, send=would_send)
    daemon.start()
    ok = False
    try:
        if not ready.wait(10):
            print("❌ the relay did not become ready", file=sys.stderr)
            return 1
        if daemon.metrics is not None:
            print(f"  metrics on {daemon.metrics.url}/metrics and {daemon.metrics.url}/healthz")
        print("  relay ready; writing messages as Messages.app would:\n")
        committed = _write_sample(writer)
        expected = len(committed)
        received = backend.wait_for_messages(expected, timeout=15)
        deadline = time.monotonic() + 10
        while (len(replies) < 4 or not pictures) and time.monotonic() < deadline:
            time.sleep(0.05)
        uploads = backend.uploads()
        # An edit, a tapback and a send from the persona's account elsewhere: events, synced
        # within a second or two instead of at the next scheduled sync; and the picture's
        # message_sent, at the next sync.
        while time.monotonic() < deadline + 10 and not (
            _event_types(backend) >= DEMO_EVENTS and _picture_sent(backend, menu)
        ):
            time.sleep(0.05)
        synced = DEMO_EVENTS & _event_types(backend)
        picture = _picture_sent(backend, menu)
        ok = (
            len(received) == expected
            and len(replies) == 4
            and len(uploads) == 1
            and synced == DEMO_EVENTS
            and picture is not None
        )
        latencies = sorted(r.at - t for r, t in zip(received, committed, strict=False))
        print()
        if ok:
            median_ms = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
            print(
                f"✅ {len(received)} of {expected} messages relayed "
                f"(2 rows skipped on purpose: one sent from the persona's phone, one tapback); "
                f"median commit → backend {median_ms:.0f} ms; "
                f"{len(replies)} reply bubbles handed to Messages.app; "
                f"{len(uploads)} photo uploaded before its message; "
                f"events synced: {', '.join(sorted(synced))}"
            )
            assert picture is not None
            print(
                f"  persona sent 1 picture, confirmed: fetched from the backend, staged, found "
                f"in chat.db; message_sent reported {picture['filename']}, "
                f"{picture['bytes']} bytes, sha256 {picture['sha256'][:12]}… (as served)"
            )
            if daemon.metrics is not None:
                print(f"  {_scrape_summary(daemon.metrics.url)}")
        else:
            print(
                f"❌ {len(received)} of {expected} messages arrived, {len(replies)} of 4 reply "
                f"bubbles and {len(pictures)} of 1 picture handed to Messages.app, the picture "
                f"{'confirmed' if picture else 'not reported sent'}, events synced: "
                f"{', '.join(sorted(synced)) or 'none'}; see {settings.log_file}"
            )
    finally:
        daemon.shutdown()
        backend.stop()
        writer.close()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"  kept {workdir} (relay.log, state/, Messages/chat.db)")
    return 0 if ok else 1


def _write_sample(writer: MessagesWriter) -> list[float]:
    """Write the sample conversation; returns when each message that should arrive committed."""
    committed: list[float] = []
    alice = writer.direct_chat(ALICE)
    bob = writer.direct_chat(BOB)
    group = writer.group_chat("chat493827461", [ALICE, BOB, CAROL])

    def send(text: str | None, **kw: object) -> int:
        rowid = writer.message(text, **kw)  # type: ignore[arg-type]
        committed.append(time.time())
        time.sleep(0.25)
        return rowid

    first = send(
        "hey, are you around? (text column, like older macOS)",
        sender=ALICE,
        chat=alice,
        text_in_column=True,
    )
    send(
        "this one lives only in attributedBody, like most on recent macOS", sender=ALICE, chat=alice
    )
    send("hello 👋 from Bob, whose handle is an e-mail address", sender=BOB, chat=bob)
    send("dinner at 8? — asked in the group", sender=CAROL, chat=group)
    # An iPhone photo: HEIC, held sideways, GPS in its EXIF. It is uploaded first, as an
    # upright JPEG with no metadata, and the message then names the photo_id it got.
    photo = iphone_photo(writer.path.parent / "Attachments" / "ab" / "IMG_0001.heic")
    send(
        "a photo \ufffc",
        sender=ALICE,
        chat=alice,
        attachments=[
            AttachmentSpec(
                str(photo), "image/heic", photo.name, photo.stat().st_size, "public.heic"
            )
        ],
    )
    # A voice note macOS already transcribed (the transcript inside attributedBody, as in the
    # public crabstep blob), and a contact card: the persona reads the words and the person.
    attachments = writer.path.parent / "Attachments" / "cd"
    attachments.mkdir(parents=True, exist_ok=True)
    audio = attachments / "Audio Message.caf"
    audio.write_bytes(voice.caf_file(3.4))
    writer.voice_note(
        sender=ALICE,
        chat=alice,
        filename=str(audio),
        transcript="running ten minutes late, order me the risotto",
    )
    committed.append(time.time())
    time.sleep(0.25)
    card = attachments / "Dana Scully.vcf"
    card.write_text(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nN:Scully;Dana;;;\r\nFN:Dana Scully\r\n"
        "TEL;type=CELL:(555) 555-0142\r\nEMAIL:dana@example.com\r\nEND:VCARD\r\n"
    )
    spec = AttachmentSpec(str(card), "text/vcard", card.name, card.stat().st_size, "public.vcard")
    send("her number \ufffc", sender=BOB, chat=bob, attachments=[spec])
    # Rows that are not messages but events: the persona's account used on its phone, and
    # Alice loving her own first message.
    writer.message("sure!", sender=None, chat=alice, is_from_me=1)
    writer.reaction(first, 2000, sender=ALICE, chat=alice)
    # Messages writes the chat join after the message row; the relay waits for it.
    rowid = writer.message(
        "the chat join for this one lands 300 ms late", sender=ALICE, chat=alice, join_chat=False
    )
    committed.append(time.time())
    time.sleep(0.3)
    writer.conn.execute("BEGIN")
    writer.join(rowid, alice)
    writer.conn.execute("COMMIT")
    # Alice edits her first message: text NULL, the new text only in attributedBody.
    writer.edit(first, "hey, are you around? (edited a moment later)")
    return committed


def _address_book(workdir: Path) -> Path:
    """The Mac owner's Contacts, as the address book keeps them: Alice has a card."""
    root = workdir / "AddressBook"
    book = AddressBookWriter(root)
    book.card("Alice", "Liddell", phones=["+1 (555) 555-0101"])
    book.close()
    return root


DEMO_EVENTS = frozenset({"message_edited", "reaction_added", "message_sent_elsewhere"})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape_summary(url: str) -> str:
    """One scrape of the demo relay's /metrics and /healthz, as an operator's Prometheus sees it."""
    wanted = ("archety_relay_messages_captured_total", "archety_relay_messages_delivered_total")
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
        with urllib.request.urlopen(url + "/healthz", timeout=5) as answer:
            status = json.loads(answer.read()).get("status")
    except (OSError, ValueError) as exc:
        return f"metrics not readable: {exc}"
    found = [line for line in text.splitlines() if line.split(" ")[0] in wanted]
    return f"{url}/metrics: " + ", ".join(found) + f"; /healthz: {status}"


def _picture_sent(backend: StubBackend, served: bytes) -> dict[str, Any] | None:
    """What the backend was told of the picture the persona sent: the `message_sent` event's
    attachment entry, if it names the very bytes the backend served."""
    digest = hashlib.sha256(served).hexdigest()
    for event in backend.sync_events():
        if event.get("event_type") != "message_sent":
            continue
        for entry in (event.get("details") or {}).get("attachments") or []:
            if entry.get("sha256") == digest and entry.get("bytes") == len(served):
                return dict(entry)
    return None


def _event_types(backend: StubBackend) -> set[str]:
    return {e.get("event_type", "") for e in backend.sync_events()}
