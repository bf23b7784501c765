"""Durable files: received instances and built result objects, written atomically, each
inside its store whatever the identifiers its path is made of."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from node.errors import CxrNodeError

_UNSAFE = re.compile(r"[^0-9A-Za-z.\-]")
_NAME_MAX = 80  # a 64-character UID, a dot and a 12-digit content hash, with room to spare


@dataclass(frozen=True)
class StoredFile:
    relpath: str
    size: int


class PathOutsideStore(CxrNodeError, ValueError):
    """A relative path that would resolve outside its store (absolute, ``..``, or through a
    symbolic link leading out)."""


class FileStore:
    """A directory tree whose files appear whole or not at all.

    Each write goes to a temporary file in the target directory, is fsynced, renamed into
    place and the directory fsynced, so a crash leaves either the old state or the new file.
    Every path is resolved by :meth:`locate`, which refuses one leading outside the root.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._real_root = self.root.resolve()

    def locate(self, relpath: str) -> Path:
        """The file ``relpath`` names inside the store.

        Raises
        ------
        PathOutsideStore
            For an empty or absolute path, a ``..`` component, a NUL character, or a path that
            resolves (following symbolic links) outside the root.
        """
        parts = PurePosixPath(relpath).parts
        if not relpath or "\0" in relpath or PurePosixPath(relpath).is_absolute() or ".." in parts:
            raise PathOutsideStore(f"{relpath[:100]!r} is not a path inside {self.root}")
        target = self.root / relpath
        if not target.resolve().is_relative_to(self._real_root):
            raise PathOutsideStore(f"{relpath[:100]!r} leads outside {self.root}")
        return target

    def write(self, relpath: str, data: bytes) -> StoredFile:
        """Write ``data`` durably at ``relpath`` (replacing any file there)."""
        target = self.locate(relpath)
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
        self.locate(relpath).unlink(missing_ok=True)

    def path(self, relpath: str) -> Path:
        """Where the file ``relpath`` names is (see :meth:`locate`)."""
        return self.locate(relpath)

    def read(self, relpath: str) -> bytes:
        return self.locate(relpath).read_bytes()


def instance_relpath(study_uid: str, sop_uid: str) -> str:
    """Spool path of a received instance: one folder per study, one file per SOP instance."""
    return f"{_safe(study_uid)}/{_safe(sop_uid)}.dcm"


def results_folder(study_uid: str, run: int) -> str:
    """Results store folder of a study's run; named like the study's spool folder."""
    return f"{_safe(study_uid)}/run-{run}"


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
