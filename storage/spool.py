"""Durable files: received instances and built result objects, written atomically."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

_UNSAFE = re.compile(r"[^0-9A-Za-z.\-]")
_NAME_MAX = 80  # a 64-character UID, a dot and a 12-digit content hash, with room to spare


@dataclass(frozen=True)
class StoredFile:
    relpath: str
    size: int


class FileStore:
    """A directory tree whose files appear whole or not at all.

    Each write goes to a temporary file in the target directory, is fsynced, renamed into
    place and the directory fsynced, so a crash leaves either the old state or the new file.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self, relpath: str, data: bytes) -> StoredFile:
        """Write ``data`` durably at ``relpath`` (replacing any file there)."""
        target = self.root / relpath
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return StoredFile(relpath, len(data))

    def remove(self, relpath: str) -> None:
        """Delete the file at ``relpath`` if it is there."""
        (self.root / relpath).unlink(missing_ok=True)

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def read(self, relpath: str) -> bytes:
        return (self.root / relpath).read_bytes()


def instance_relpath(study_uid: str, sop_uid: str) -> str:
    """Spool path of a received instance: one folder per study, one file per SOP instance."""
    return f"{_safe(study_uid)}/{_safe(sop_uid)}.dcm"


def _safe(uid: str) -> str:
    # UIDs are digits and dots; anything else (from a malformed header) must not form a path.
    # A name that had to be changed or cut keeps a digest of the original, so two different
    # values never share a file (the caller's content hash at the end is never cut away).
    # A leading "_" keeps "." and ".." (and hidden-file names) from being what the path says.
    safe = _UNSAFE.sub("_", uid)
    if safe == uid and 0 < len(uid) <= _NAME_MAX and not uid.startswith("."):
        return uid
    digest = hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"_{safe[: _NAME_MAX - 18]}_{digest}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
