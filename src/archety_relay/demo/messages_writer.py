"""Plays Messages.app: writes a chat.db from Apple's schema the way Messages writes it.

Used by the demo, the tests and the benchmarks. It writes what Messages writes: the message row,
then its chat join in a separate step (optionally later, as happens for real), text only in
`attributedBody` on recent macOS, dates in nanoseconds since 2001, WAL journal.
Never point it at a real chat.db.
"""

from __future__ import annotations

import plistlib
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..chatdb import typedstream
from ..chatdb.rows import APPLE_EPOCH, ATTACHMENT_PLACEHOLDER, apple_date

# Functions only Messages.app registers; the schema's triggers call them.
_STAND_INS: tuple[tuple[str, int, object], ...] = (
    ("verify_chat", 1, None),
    ("guid_for_chat", 3, None),
    ("is_mic_enabled", 0, 0),
    ("delete_chat_background_before_deleting_chat", 2, None),
    ("before_delete_attachment_path", 2, None),
    ("delete_attachment_path", 1, None),
    ("after_delete_message_plugin", 2, None),
)


def schema_sql() -> str:
    return resources.files(__package__).joinpath("chatdb_schema.sql").read_text()


@dataclass(frozen=True)
class AttachmentSpec:
    filename: str
    mime_type: str = "image/jpeg"
    transfer_name: str | None = None
    total_bytes: int = 1024
    uti: str = "public.jpeg"
    # 5: Messages finished the transfer. 0 with ck_sync_state 1: still in iCloud (not on disk).
    transfer_state: int = 5
    ck_sync_state: int = 0
    guid: str | None = None
    is_sticker: int = 0
    user_info: bytes | None = None  # a binary plist (a voice note's transcript, see voice_note)


class MessagesWriter:
    def __init__(self, path: Path, *, unique_id: str | None = None) -> None:
        self.path = path
        fresh = not path.exists()
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for name, nargs, result in _STAND_INS:
            self.conn.create_function(name, nargs, lambda *_args, _r=result: _r)
        if fresh:
            self.conn.execute("PRAGMA journal_mode = WAL").fetchall()
            self.conn.executescript(schema_sql())
            self.conn.execute(
                "INSERT INTO _SqliteDatabaseProperties (key, value) VALUES ('_UniqueIdentifier', ?)",
                (unique_id or str(uuid.uuid4()).upper(),),
            )
        self._handles: dict[str, int] = {}

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> MessagesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- people and chats -------------------------------------------------------------------
    def handle(self, address: str, service: str = "iMessage") -> int:
        if address in self._handles:
            return self._handles[address]
        row = self.conn.execute(
            "SELECT ROWID FROM handle WHERE id = ? AND service = ?", (address, service)
        ).fetchone()
        if row is None:
            cur = self.conn.execute(
                "INSERT INTO handle (id, service, uncanonicalized_id) VALUES (?, ?, ?)",
                (address, service, address),
            )
            row = (cur.lastrowid,)
        self._handles[address] = row[0]
        return int(row[0])

    def direct_chat(self, address: str, service: str = "iMessage") -> int:
        return self.chat(f"{service};-;{address}", 45, [address], identifier=address)

    def group_chat(self, name: str, members: Sequence[str], service: str = "iMessage") -> int:
        return self.chat(f"{service};+;{name}", 43, members, identifier=name)

    def chat(self, guid: str, style: int, members: Sequence[str], identifier: str) -> int:
        row = self.conn.execute("SELECT ROWID FROM chat WHERE guid = ?", (guid,)).fetchone()
        if row:
            return int(row[0])
        self.conn.execute("BEGIN")
        cur = self.conn.execute(
            "INSERT INTO chat (guid, style, state, chat_identifier, service_name) "
            "VALUES (?, ?, 3, ?, 'iMessage')",
            (guid, style, identifier),
        )
        chat_id = int(cur.lastrowid or 0)
        for member in members:
            self.conn.execute(
                "INSERT OR IGNORE INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)",
                (chat_id, self.handle(member)),
            )
        self.conn.execute("COMMIT")
        return chat_id

    # -- messages ---------------------------------------------------------------------------
    def message(
        self,
        text: str | None,
        *,
        sender: str | None,
        chat: int | None,
        text_in_column: bool = False,
        is_from_me: int = 0,
        item_type: int = 0,
        associated_message_type: int = 0,
        sent_at: float | None = None,
        attachments: Iterable[AttachmentSpec] = (),
        attributed_body: bytes | None = None,
        guid: str | None = None,
        join_chat: bool = True,
        columns: Mapping[str, object] | None = None,
    ) -> int:
        """Write one message as Messages does: the row, its attachments, then its chat join.

        `columns` sets any other `message` column in the same transaction."""
        self.conn.execute("BEGIN")
        try:
            rowid = self._insert_message(
                text,
                sender,
                text_in_column,
                is_from_me,
                item_type,
                associated_message_type,
                sent_at,
                attachments,
                attributed_body,
                guid,
            )
            if columns:
                names = ", ".join(f"{name} = ?" for name in columns)
                self.conn.execute(
                    f"UPDATE message SET {names} WHERE ROWID = ?", (*columns.values(), rowid)
                )
            if chat is not None and join_chat:
                self.join(rowid, chat)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return rowid

    def burst(
        self, texts: Sequence[str], *, sender: str, chat: int, text_in_column: bool = False
    ) -> list[int]:
        """Many messages committed in one transaction (a sync catching up, a busy group)."""
        self.conn.execute("BEGIN")
        rowids = []
        for text in texts:
            rowid = self._insert_message(
                text, sender, text_in_column, 0, 0, 0, None, (), None, None
            )
            self.join(rowid, chat)
            rowids.append(rowid)
        self.conn.execute("COMMIT")
        return rowids

    def fill_history(self, count: int, *, sender: str, chat: int, days: float = 400) -> None:
        """`count` old messages with their chat joins, written in bulk (for scale benchmarks)."""
        handle = self.handle(sender)
        body = typedstream.encode("an old message from long ago")
        start = time.time() - days * 86400
        step = days * 86400 / max(count, 1)
        self.conn.execute("BEGIN")
        batch = 50_000
        for first in range(0, count, batch):
            rows = [
                (str(uuid.uuid4()).upper(), body, handle, apple_date(start + i * step))
                for i in range(first, min(count, first + batch))
            ]
            self.conn.executemany(
                "INSERT INTO message (guid, attributedBody, handle_id, service, date, "
                "is_finished, is_delivered) VALUES (?, ?, ?, 'iMessage', ?, 1, 1)",
                rows,
            )
        self.conn.execute(
            "INSERT INTO chat_message_join (chat_id, message_id, message_date, index_state) "
            "SELECT ?, ROWID, date, 2 FROM message WHERE handle_id = ?",
            (chat, handle),
        )
        self.conn.execute("COMMIT")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def record_sent(self, chat_guid: str, text: str, file: Path | None = None) -> None:
        """What Messages writes after sending `text` to a chat: an outgoing row joined to it.
        A `file` sent instead is the row's attachment, read where it lies (U+FFFC as the text):
        what public evidence says Messages does with a file under ~/Library/Messages (see
        outbound.retention). Safe from another thread (its own connection), as Messages is
        another process."""
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        for name, nargs, result in _STAND_INS:
            conn.create_function(name, nargs, lambda *_args, _r=result: _r)
        try:
            chat = conn.execute("SELECT ROWID FROM chat WHERE guid = ?", (chat_guid,)).fetchone()
            date = apple_date(time.time())
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "INSERT INTO message (guid, attributedBody, handle_id, service, date, is_from_me, "
                "is_finished, is_sent, cache_has_attachments) "
                "VALUES (?, ?, 0, 'iMessage', ?, 1, 1, 1, ?)",
                (
                    str(uuid.uuid4()).upper(),
                    typedstream.encode(ATTACHMENT_PLACEHOLDER if file else text),
                    date,
                    int(file is not None),
                ),
            )
            if file is not None:
                guid = str(uuid.uuid4()).upper()
                attachment = conn.execute(
                    "INSERT INTO attachment (guid, original_guid, filename, transfer_name, "
                    "total_bytes, is_outgoing, transfer_state) VALUES (?, ?, ?, ?, ?, 1, 5)",
                    (guid, guid, str(file), file.name, file.stat().st_size),
                )
                conn.execute(
                    "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?, ?)",
                    (cur.lastrowid, attachment.lastrowid),
                )
            if chat is not None:
                conn.execute(
                    "INSERT INTO chat_message_join (chat_id, message_id, message_date) "
                    "VALUES (?, ?, ?)",
                    (chat[0], cur.lastrowid, date),
                )
            conn.execute("COMMIT")
        finally:
            conn.close()

    def join(self, message_rowid: int, chat: int) -> None:
        date = self.conn.execute(
            "SELECT date FROM message WHERE ROWID = ?", (message_rowid,)
        ).fetchone()[0]
        self.conn.execute(
            "INSERT OR IGNORE INTO chat_message_join (chat_id, message_id, message_date) "
            "VALUES (?, ?, ?)",
            (chat, message_rowid, date),
        )

    def _insert_message(
        self,
        text: str | None,
        sender: str | None,
        text_in_column: bool,
        is_from_me: int,
        item_type: int,
        associated_message_type: int,
        sent_at: float | None,
        attachments: Iterable[AttachmentSpec],
        attributed_body: bytes | None,
        guid: str | None,
    ) -> int:
        body = attributed_body
        if body is None and text is not None:
            body = typedstream.encode(text)
        cur = self.conn.execute(
            "INSERT INTO message (guid, text, attributedBody, handle_id, service, date, "
            "is_from_me, item_type, associated_message_type, is_finished, is_sent, is_delivered) "
            "VALUES (?, ?, ?, ?, 'iMessage', ?, ?, ?, ?, 1, ?, 1)",
            (
                guid or str(uuid.uuid4()).upper(),
                text if text_in_column else None,
                body,
                self.handle(sender) if sender else 0,
                apple_date(time.time() if sent_at is None else sent_at),
                is_from_me,
                item_type,
                associated_message_type,
                is_from_me,
            ),
        )
        rowid = int(cur.lastrowid or 0)
        for spec in attachments:
            att = self.conn.execute(
                "INSERT INTO attachment (guid, original_guid, filename, mime_type, transfer_name,"
                " total_bytes, uti, transfer_state, ck_sync_state, is_sticker, user_info) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (g := spec.guid or str(uuid.uuid4()).upper()),
                    g,
                    spec.filename,
                    spec.mime_type,
                    spec.transfer_name or Path(spec.filename).name,
                    spec.total_bytes,
                    spec.uti,
                    spec.transfer_state,
                    spec.ck_sync_state,
                    spec.is_sticker,
                    spec.user_info,
                ),
            )
            self.conn.execute(
                "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?, ?)",
                (rowid, att.lastrowid),
            )
        return rowid

    def voice_note(
        self,
        *,
        sender: str,
        chat: int,
        filename: str,
        transcript: str | None = None,
        transcript_in: str = "body",
        total_bytes: int = 2048,
        sent_at: float | None = None,
        guid: str | None = None,
        attachment_guid: str | None = None,
    ) -> int:
        """A voice note as Messages writes it: `is_audio_message = 1`, one CAF attachment and
        an attributedBody of U+FFFC naming it. Apple's transcript, when given, is in the
        attributedBody (`transcript_in="body"`) or the attachment's user_info plist
        ("user_info"); see `transcribe` for one that comes later."""
        file_guid = attachment_guid or str(uuid.uuid4()).upper()
        in_body = transcript if transcript_in == "body" else None
        info = None
        if transcript is not None and transcript_in == "user_info":
            info = plistlib.dumps({"audio-transcription": transcript}, fmt=plistlib.FMT_BINARY)
        spec = AttachmentSpec(
            filename=filename,
            mime_type="audio/x-caf",
            transfer_name="Audio Message.caf",
            total_bytes=total_bytes,
            uti="com.apple.coreaudio-format",
            guid=file_guid,
            user_info=info,
        )
        return self.message(
            None,
            sender=sender,
            chat=chat,
            sent_at=sent_at,
            attachments=[spec],
            attributed_body=typedstream.encode_voice(file_guid, in_body),
            guid=guid,
            columns={"is_audio_message": 1},
        )

    def transcribe(self, rowid: int, transcript: str, *, where: str = "body") -> None:
        """macOS finished transcribing a voice note: the text lands in the attributedBody or in
        its attachment's user_info (both are read; which one a given macOS uses is unknown)."""
        if where == "body":
            file_guid = self.conn.execute(
                "SELECT a.guid FROM message_attachment_join AS j JOIN attachment AS a "
                "ON a.ROWID = j.attachment_id WHERE j.message_id = ?",
                (rowid,),
            ).fetchone()[0]
            self.conn.execute(
                "UPDATE message SET attributedBody = ? WHERE ROWID = ?",
                (typedstream.encode_voice(file_guid, transcript), rowid),
            )
        else:
            info = plistlib.dumps({"audio-transcription": transcript}, fmt=plistlib.FMT_BINARY)
            self.conn.execute(
                "UPDATE attachment SET user_info = ? WHERE ROWID IN "
                "(SELECT attachment_id FROM message_attachment_join WHERE message_id = ?)",
                (info, rowid),
            )

    def finish_download(self, attachment_guid: str) -> None:
        """What Messages does when an attachment's file has landed: transfer_state 5."""
        self.conn.execute(
            "UPDATE attachment SET transfer_state = 5, ck_sync_state = 1 WHERE guid = ?",
            (attachment_guid,),
        )

    # -- what happens to a message later (UPDATEs, and rows about other rows) ---------------
    def edit(self, rowid: int, new_text: str, *, at: float | None = None, part: int = 0) -> None:
        """Edit as macOS 13+ records it: `date_edited` stamped, `text` NULL, the new text only in
        `attributedBody`, every version in `message_summary_info.ec[part]` (oldest first)."""
        when = time.time() if at is None else at
        text, body, info = self.conn.execute(
            "SELECT text, attributedBody, message_summary_info FROM message WHERE ROWID = ?",
            (rowid,),
        ).fetchone()
        summary = plistlib.loads(info) if info else {}
        history = summary.setdefault("ec", {}).setdefault(str(part), [])
        if not history:  # the original becomes version 0
            original = body or typedstream.encode(text or "")
            history.append({"d": when - 60 - APPLE_EPOCH, "t": original, "bcg": str(uuid.uuid4())})
        new_body = typedstream.encode(new_text)
        history.append({"d": when - APPLE_EPOCH, "t": new_body, "bcg": str(uuid.uuid4())})
        summary.update({"amc": 0, "ust": True, "ep": [part], "otr": {str(part): {"lo": 0}}})
        self.conn.execute(
            "UPDATE message SET text = NULL, attributedBody = ?, date_edited = ?, "
            "message_summary_info = ? WHERE ROWID = ?",
            (new_body, apple_date(when), plistlib.dumps(summary, fmt=plistlib.FMT_BINARY), rowid),
        )

    def unsend(
        self,
        rowid: int,
        *,
        parts: Sequence[int] = (0,),
        at: float | None = None,
        whole: bool = True,
    ) -> None:
        """Unsend as macOS 26 records it: an edit that lists the withdrawn parts in `rp`, the
        body cleared and `is_empty = 1` (`date_retracted` stays 0). `whole=False`: one part of
        a multi-part message (a photo of several), the rest of the body kept."""
        when = time.time() if at is None else at
        summary = {"amc": 0, "ust": True, "ep": list(parts), "otr": {}, "rp": list(parts)}
        cleared = "text = NULL, attributedBody = NULL, is_empty = 1, " if whole else ""
        self.conn.execute(
            f"UPDATE message SET {cleared}date_edited = ?, date_retracted = 0, "
            "message_summary_info = ? WHERE ROWID = ?",
            (apple_date(when), plistlib.dumps(summary, fmt=plistlib.FMT_BINARY), rowid),
        )

    def mark_read(self, rowid: int, *, at: float | None = None) -> None:
        """The recipient read it: `is_read`, `date_read` (and delivered) on the row."""
        self.conn.execute(
            "UPDATE message SET is_read = 1, date_read = ?, is_delivered = 1, "
            "date_delivered = ? WHERE ROWID = ?",
            (apple_date(time.time() if at is None else at),) * 2 + (rowid,),
        )

    def mark_delivered(self, rowid: int, *, at: float | None = None) -> None:
        """The recipient's phone got the persona's message: `is_delivered`, `date_delivered`."""
        self.conn.execute(
            "UPDATE message SET is_delivered = 1, date_delivered = ? WHERE ROWID = ?",
            (apple_date(time.time() if at is None else at), rowid),
        )

    def mark_failed(self, rowid: int, error: int) -> None:
        """Messages gave up on a sent row, possibly minutes after the send: `error` set (22:
        the number is not on iMessage), not delivered."""
        self.conn.execute(
            "UPDATE message SET error = ?, is_delivered = 0, date_delivered = 0 WHERE ROWID = ?",
            (error, rowid),
        )

    def guid_of(self, rowid: int) -> str:
        return str(
            self.conn.execute("SELECT guid FROM message WHERE ROWID = ?", (rowid,)).fetchone()[0]
        )

    def reaction(
        self,
        target_rowid: int,
        associated_type: int,
        *,
        sender: str | None,
        chat: int,
        emoji: str | None = None,
        part: int = 0,
        is_from_me: int = 0,
    ) -> int:
        """A tapback row: its own guid, `associated_message_guid` = `p:<part>/<target>`, the
        fallback text Messages writes, the emoji in `associated_message_emoji` (macOS 15+)."""
        target = self.guid_of(target_rowid)
        verb = "Removed a reaction from" if associated_type >= 3000 else "Reacted to"
        return self.message(
            f"{verb} “…”",
            sender=sender,
            chat=chat,
            is_from_me=is_from_me,
            associated_message_type=associated_type,
            columns={
                "associated_message_guid": f"p:{part}/{target}",
                "associated_message_emoji": emoji,
                "associated_message_range_length": 1,
            },
        )

    def group_action(
        self,
        chat: int,
        *,
        item_type: int,
        action: int = 0,
        sender: str | None,
        other: str | None = None,
        title: str | None = None,
    ) -> int:
        """A group change row as Messages writes it: no text, `item_type` 1 (member added or
        removed), 2 (renamed, `group_title`) or 3 (left, photo), `other_handle` the member."""
        return self.message(
            None,
            sender=sender,
            chat=chat,
            item_type=item_type,
            columns={
                "group_action_type": action,
                "other_handle": self.handle(other) if other else 0,
                "group_title": title,
            },
        )

    def checkpoint(self) -> tuple[int, int, int]:
        """`PRAGMA wal_checkpoint(TRUNCATE)` as Messages runs it: (busy, log, checkpointed)."""
        row = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])
