"""Where a file the persona sends waits for Messages.app: a folder Messages may read (issue #19).

Messages is sandboxed: a file outside the places it may read "sends" with osascript exit 0 and
arrives as "failed to send" (anthropics/claude-plugins-official#1113; openclaw/imsg PR #15 and
#110 stage under `~/Library/Messages/Attachments/imsg/<UUID>/`, error 25 otherwise). Each
outgoing file gets `~/Library/Messages/Attachments/archety/<outgoing id>/<safe name>` (the
Attachments folder beside the chat.db the relay reads).

The name is the backend's `filename` (or the URL's last part) made safe: its last path part
only, no control or path characters, no leading dot, at most MAX_NAME_CHARS, and an extension
that matches what the bytes are. Whatever the name says, the staged path is checked to lie
inside the staging folder. Pure decisions (`safe_name`, `sniff`) and a few file operations.
"""

from __future__ import annotations

import shutil
import unicodedata
import urllib.parse
from pathlib import Path

STAGING_PARTS = ("Attachments", "archety")
MAX_NAME_CHARS = 100
# A name's limit on disk is in bytes: 255 UTF-8 bytes on APFS and ext4 (HFS+ counts the
# decomposed form), so 100 emoji (400 bytes) could not be written at all.
MAX_NAME_BYTES = 255
DOWNLOAD_NAME = ".download"  # the fetch writes here first (a leading dot: never a safe name)
# Magic numbers of what the persona is likely to send, and the extensions that name each.
_MAGIC: tuple[tuple[bytes, int, str, tuple[str, ...]], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, ".png", (".png",)),
    (b"\xff\xd8\xff", 0, ".jpg", (".jpg", ".jpeg")),
    (b"GIF87a", 0, ".gif", (".gif",)),
    (b"GIF89a", 0, ".gif", (".gif",)),
    (b"%PDF-", 0, ".pdf", (".pdf",)),
    (b"#!AMR", 0, ".amr", (".amr",)),
    (b"caff", 0, ".caf", (".caf",)),
)
# ISO base media (ftyp at offset 4): the brand says which.
_FTYP: dict[bytes, tuple[str, tuple[str, ...]]] = {
    b"heic": (".heic", (".heic", ".heif")),
    b"heix": (".heic", (".heic", ".heif")),
    b"mif1": (".heic", (".heic", ".heif")),
    b"qt  ": (".mov", (".mov",)),
    b"M4A ": (".m4a", (".m4a",)),
    b"isom": (".mp4", (".mp4", ".m4v")),
    b"mp41": (".mp4", (".mp4", ".m4v")),
    b"mp42": (".mp4", (".mp4", ".m4v")),
}
_SNIFFED_EXTENSIONS = (
    {ext for *_, exts in _MAGIC for ext in exts}
    | {ext for _, exts in _FTYP.values() for ext in exts}
    | {".webp", ".zip", ".docx", ".xlsx", ".pptx"}
)


def root_for(chat_db: Path) -> Path:
    """The staging folder: Messages' own Attachments folder (beside chat.db), `archety/`."""
    return chat_db.parent.joinpath(*STAGING_PARTS)


def sniff(head: bytes) -> tuple[str, tuple[str, ...]] | None:
    """(canonical extension, extensions that fit) for the first bytes of a file, or None."""
    for magic, offset, ext, fits in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return ext, fits
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP:
        return _FTYP[head[8:12]]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp", (".webp",)
    if head[:4] == b"PK\x03\x04":
        return ".zip", (".zip", ".docx", ".xlsx", ".pptx", ".pages", ".numbers", ".key")
    return None


def _clean(part: str) -> str:
    """One file name's characters: no control, format or path characters; dots and spaces at
    either end dropped (no hidden file, no `..`)."""
    kept = "".join(
        ch
        for ch in unicodedata.normalize("NFC", part)
        if unicodedata.category(ch)[0] != "C" and ch not in '/\\:"*?<>|'
    )
    return kept.strip(" .")


def safe_name(filename: str | None, url: str, head: bytes) -> str:
    """The name a staged file gets: see the module's docstring. Never empty, never a path."""
    raw = filename or urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    last = raw.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    name = _clean(last)
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    ext = "." + ext.lower() if ext and ext.isalnum() and len(ext) <= 8 else ""
    stem = _clean(stem if dot else name) or "file"
    kind = sniff(head)
    if kind is not None and ext not in kind[1]:
        ext = kind[0]  # the bytes decide: a PNG called menu.pdf is menu.png
    elif kind is None and ext in _SNIFFED_EXTENSIONS:
        ext = ".bin"  # it says .png but is not one: do not let Messages believe it
    stem = stem[: MAX_NAME_CHARS - len(ext)]
    while stem and not _fits(stem + ext):
        stem = stem[:-1]
    return (stem.rstrip(" .") or "file") + ext


def _fits(name: str) -> bool:
    return all(
        len(unicodedata.normalize(form, name).encode()) <= MAX_NAME_BYTES for form in ("NFC", "NFD")
    )


def folder(root: Path, outgoing_id: int) -> Path:
    return root / str(int(outgoing_id))


def fresh_folder(root: Path, outgoing_id: int) -> Path:
    """The row's staging folder, made anew as a real, empty directory of ours. Whatever stood
    there goes first: a crash's `.download`, or a link someone on this Mac planted to have the
    download written into a folder of theirs (a link is removed as a link, never followed).
    OSError if it cannot be made (FileExistsError: something took its place meanwhile)."""
    if root.is_symlink():
        raise NotADirectoryError("the staging folder is a link")
    path = folder(root, outgoing_id)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    root.mkdir(parents=True, exist_ok=True)
    path.mkdir()
    return path


def place(root: Path, outgoing_id: int, name: str) -> Path:
    """The staged path for `name`, refused (ValueError) if it would leave the staging folder."""
    base = folder(root, outgoing_id).resolve()
    path = (base / name).resolve()
    if path.parent != base or not path.is_relative_to(root.resolve()):
        raise ValueError("staged name escapes the staging folder")
    return path


def remove(root: Path, outgoing_id: int) -> None:
    """The staged folder of one outgoing file, gone (missing is fine)."""
    shutil.rmtree(folder(root, outgoing_id), ignore_errors=True)
