"""Files the persona sends, fetched off the dispatcher's step (issue #19).

A fetch may take up to its 120 s deadline (a file server trickling a byte a second, one that
never answers). Run inside the dispatcher's step, it held every chat's sends that long. Now
each fetch runs on a thread of its own (`underway.Job`): the dispatcher starts it when the
file's row is due, serves the other chats, and is woken when it is back. Only the file's own
chat waits: the row stays its chat's head, so the bubbles after it keep their order.

At most MAX_FETCHES_UNDER_WAY at once (each holds a connection and a file being written) and
one per chat, so never two for one row. The thread touches nothing but the row's own staging
folder: it downloads into `.download` there and renames it to the safe name once complete.
What the row comes to (staged, failed) is recorded by the dispatcher, on its thread.

A crash or a shutdown mid-fetch leaves at most that `.download`, which is never sent: the row
is still pending with nothing staged, so the next relay fetches it again from the start (the
first thing a fetch does is make the row's folder anew).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..backend.files import Fetched, FetchFailed
from ..store import Outgoing, StagedFile
from . import staging
from .underway import Job

# Fetches under way at once, at most (a file server that hangs every fetch costs this many
# threads and connections; the other chats' text is not held by them).
MAX_FETCHES_UNDER_WAY = 2

Fetcher = Callable[[str, Path, int], Fetched | FetchFailed]


def fetch_and_place(
    fetch: Fetcher, root: Path, item: Outgoing, max_bytes: int
) -> StagedFile | FetchFailed:
    """Fetch the row's file into its staging folder under a safe name (see staging); on
    failure the folder is gone. Runs on the fetch's own thread. Never raises for what the disk
    does: an exception here left the row pending and its chat stuck behind it."""
    assert item.file is not None
    try:
        folder = staging.fresh_folder(root, item.id)  # a fetch a crash cut short goes too
    except OSError as exc:
        return FetchFailed(f"download_failed: could not stage ({type(exc).__name__})")
    partial = folder / staging.DOWNLOAD_NAME
    got = fetch(item.file.url, partial, max_bytes)
    if isinstance(got, Fetched):
        try:
            with partial.open("rb") as f:
                name = staging.safe_name(item.file.filename, item.file.url, f.read(64))
            path = staging.place(root, item.id, name)
            partial.rename(path)
        except ValueError:
            got = FetchFailed("invalid_filename: the staged name would leave its folder")
        except OSError as exc:
            got = FetchFailed(f"download_failed: could not stage ({type(exc).__name__})")
        else:
            return StagedFile(str(path), got.size, got.sha256)
    staging.remove(root, item.id)
    return got


@dataclass
class Fetching:
    """The fetch of one outgoing row's file, under way."""

    item: Outgoing
    job: Job[StagedFile | FetchFailed]


class Fetches:
    """The fetches under way, by chat: at most MAX_FETCHES_UNDER_WAY, one per chat."""

    def __init__(
        self,
        root: Path,
        fetch: Callable[[], Fetcher],
        max_bytes: int,
        finished: Callable[[], None],
    ) -> None:
        self.root = root
        self._fetch = fetch  # read at each start: a test may swap the outbound's fetcher
        self.max_bytes = max_bytes
        self._finished = finished
        self._by_chat: dict[str, Fetching] = {}

    def __contains__(self, chat_guid: object) -> bool:
        return chat_guid in self._by_chat

    def __bool__(self) -> bool:
        return bool(self._by_chat)

    @property
    def full(self) -> bool:
        return len(self._by_chat) >= MAX_FETCHES_UNDER_WAY

    def start(self, item: Outgoing) -> Fetching | None:
        """Start fetching `item`'s file (None: as many fetches as allowed are under way)."""
        if item.chat_guid in self._by_chat or self.full:
            return None
        fetch = self._fetch()
        job = Job(
            lambda: fetch_and_place(fetch, self.root, item, self.max_bytes),
            f"relay-fetch-{item.id}",
            self._finished,
        )
        fetching = self._by_chat[item.chat_guid] = Fetching(item, job)
        return fetching

    def take(self, chat_guid: str) -> None:
        """The chat's fetch is being recorded: it is no longer under way."""
        self._by_chat.pop(chat_guid, None)

    def finished(self) -> list[Fetching]:
        """The fetches that are back, taken out of those under way."""
        done = [f for f in self._by_chat.values() if f.job.wait(0)]
        for fetching in done:
            self.take(fetching.item.chat_guid)
        return done

    def ids(self) -> set[int]:
        """The outgoing ids being fetched (their staging folders are in use)."""
        return {f.item.id for f in list(self._by_chat.values())}
