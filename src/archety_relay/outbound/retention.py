"""How long a staged file (see staging) is kept, and the step that removes the rest (issue #19).

What Messages.app does with a file `send (POSIX file …) as alias` hands it, from public evidence
(nothing here ran on a Mac):
- BlueBubbles stages AppleScript sends in `~/Library/Messages/Attachments/BlueBubbles/<uuid>/`
  on Monterey and later and deletes the copy after the send only on older macOS, because "when
  AppleScript sees [a file within the iMessage directory] it _does not_ copy the attachment to a
  permanent location. This means that if we delete the attachment, it won't be downloadable
  anymore" (BlueBubblesApp/bluebubbles-server, packages/server/src/server/api/interfaces/
  messageInterface.ts `sendAttachmentSync`, at f2e2286; its `clearAttachmentCaches` in
  fileSystem/index.ts leaves that folder alone too).
- imsg stages under `~/Library/Messages/Attachments/imsg/<UUID>/` and never deletes: "The
  staged copies … are not pruned automatically" (steipete/imsg docs/attachments.md and
  MessageSender.swift `stageAttachment`, at c7ae79c; the folder is there since openclaw/imsg
  PR #15: outside it the upload fails with error 25).
- anthropics/claude-plugins-official#1113: the sandbox is why a file must be staged there at
  all; nothing in it says Messages copies a file it can already read.
So a staged file is most likely the only copy Messages has of what it sent, and chat.db's
`attachment.filename` names it. The issue's rule for "unsure" applies: a file chat.db shows
Messages holding a copy of elsewhere goes at once; one it names (or one we cannot tell about)
is kept KEEP_SECONDS after its row finished, then removed. After that, Messages on this Mac
shows that bubble's file as missing; the recipients got theirs when it was sent (unverified).

The decision (`decide`) is a function of values: a folder on disk, its outgoing row (status,
attempts, when it finished), what chat.db names for that row, the ids in use right now, `now`.
`StagedFiles.prune(now, busy)` reads those values, removes what the decision says, and logs
`staged_files_pruned` with a count. It only ever removes a real directory directly inside the
staging root named like an outgoing id: symlinks are never followed (nor removed), and anything
else there is left alone and logged once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..chatdb.reader import ChatDb
from ..errors import ChatDbUnavailable
from ..store import StagedRow, Store
from ..store.outgoing import PENDING, SENDING, SENT

log = structlog.get_logger("archety_relay.outbound")

# How long a staged file that Messages may still be reading from is kept after its row finished.
KEEP_SECONDS = 7 * 86400

# Why a folder stays or goes (the verdict's reason).
NOT_OURS = "not_an_outgoing_folder"
IN_USE = "in_use"
NOT_SENT = "not_sent"
MESSAGES_COPY = "messages_has_its_own_copy"
KEPT = "kept_for_messages"
EXPIRED = "kept_long_enough"
NO_ROW = "no_row"


@dataclass(frozen=True)
class Folder:
    """One entry directly inside the staging root, as seen without following links."""

    name: str
    is_dir: bool  # a real directory (not a symlink, not a file)
    modified: float  # the newest mtime of it and what it holds


@dataclass(frozen=True)
class Verdict:
    name: str
    remove: bool
    reason: str


def outgoing_id(folder: Folder) -> int | None:
    """The outgoing id a staging folder belongs to, or None when it is not one of ours."""
    if not folder.is_dir or not folder.name.isascii() or not folder.name.isdigit():
        return None
    return int(folder.name)


def messages_holds_it(held: Sequence[str] | None, folder: Path) -> bool:
    """Whether Messages may be reading the staged file: chat.db names a file in the staging
    folder as the row's attachment, or names none (not known). Only a copy of its own
    elsewhere frees the staged file."""
    if not held:
        return True
    return any(Path(path).is_relative_to(folder) for path in held)


def decide(
    folder: Folder,
    row: StagedRow | None,
    held: Sequence[str] | None,
    busy: Collection[int],
    folder_path: Path,
    now: float,
) -> Verdict:
    """Keep or remove one staging folder. `held`: the paths chat.db names as the attachments
    of the row's sent message (None: not looked up, or chat.db could not be read)."""
    ident = outgoing_id(folder)
    if ident is None:
        return Verdict(folder.name, False, NOT_OURS)
    if ident in busy or (row is not None and row.status in (PENDING, SENDING)):
        return Verdict(folder.name, False, IN_USE)
    if row is None:
        # Its row is gone (pruned after 30 days, or another state file): its age is the folder's.
        return Verdict(folder.name, now - folder.modified >= KEEP_SECONDS, NO_ROW)
    if row.status != SENT:
        return Verdict(folder.name, True, NOT_SENT)  # failed, cancelled, missed: Messages has none
    if not messages_holds_it(held, folder_path):
        return Verdict(folder.name, True, MESSAGES_COPY)
    expired = now - row.updated_at >= KEEP_SECONDS
    return Verdict(folder.name, expired, EXPIRED if expired else KEPT)


def scan(root: Path) -> list[Folder]:
    """What is directly inside the staging root, without following a link (none: no root)."""
    found: list[Folder] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return found
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            modified = entry.stat(follow_symlinks=False).st_mtime
            if is_dir:
                with os.scandir(entry.path) as inside:
                    for item in inside:
                        modified = max(modified, item.stat(follow_symlinks=False).st_mtime)
        except OSError:
            continue  # gone meanwhile, or unreadable: looked at again next time
        found.append(Folder(entry.name, is_dir, modified))
    return found


class StagedFiles:
    """The staging folders of one relay, pruned by `prune(now, busy)` on the maintenance timer."""

    def __init__(self, root: Path, store: Store, chatdb: ChatDb) -> None:
        self.root = root
        self.store = store
        self.chatdb = chatdb
        self._logged: set[str] = set()  # entries not ours, each logged once

    def prune(self, now: float, busy: Collection[int] = ()) -> int:
        """Remove the staging folders `decide` says are no longer needed; how many went."""
        if self.root.is_symlink():
            self._once("staging_root_is_a_link", root=str(self.root))
            return 0
        folders = scan(self.root)
        ids = [i for i in map(outgoing_id, folders) if i is not None]
        rows = self.store.staged_rows(ids) if ids else {}
        # chat.db names a staged file by the resolved path the send script was given.
        real_root = self.root.resolve()
        removed = 0
        for folder in folders:
            ident = outgoing_id(folder)
            row = rows.get(ident) if ident is not None else None
            held = self._held(row, now)
            verdict = decide(folder, row, held, busy, real_root / folder.name, now)
            if verdict.reason == NOT_OURS:
                self._once("staged_folder_left_alone", folder=folder.name, root=str(self.root))
            elif verdict.remove and self._remove(self.root / folder.name):
                removed += 1
        if removed:
            log.info("staged_files_pruned", count=removed)
        return removed

    def _held(self, row: StagedRow | None, now: float) -> list[str] | None:
        """What chat.db names as the files of a sent row's message, where that can change the
        decision (a sent row within KEEP_SECONDS); None when not looked up or unreadable."""
        if row is None or row.status != SENT or not row.apple_guid:
            return None
        if now - row.updated_at >= KEEP_SECONDS:
            return None
        try:
            return self.chatdb.attachment_paths(row.apple_guid)
        except ChatDbUnavailable:
            return None  # kept: looked at again on the next prune

    def _remove(self, path: Path) -> bool:
        # Checked again right before: only a real directory directly inside the root goes.
        # rmtree removes links inside it as links, never what they point to.
        if path.is_symlink() or not path.is_dir() or path.parent != self.root:
            return False
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("staged_folder_not_removed", folder=path.name, error=type(exc).__name__)
            return False
        return True

    def _once(self, event: str, **fields: str) -> None:
        key = f"{event}:{fields.get('folder', '')}"
        if key not in self._logged:
            self._logged.add(key)
            log.info(event, **fields)
