"""The data directory's disks: is there room, and was an error a full disk.

The spool, the results and the SQLite file all live under ``data_dir`` but may sit on
different file systems (a mounted results volume, say); each must keep ``min_free_disk_mb``
free, or the node stops taking work it could not finish.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from node.config import Settings


def data_paths(settings: Settings) -> tuple[Path, ...]:
    """The folders the node writes to: spool, results and (on SQLite) the database's."""
    paths = [settings.data_dir / "spool", settings.data_dir / "results"]
    url = settings.database_url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        paths.append(Path(url.removeprefix("sqlite:///")).parent)
    return tuple(paths)


def lowest_free_bytes(paths: Iterable[Path]) -> int:
    """The least free space among the file systems of ``paths`` (of its nearest existing
    folder, for a path not created yet)."""
    return min(shutil.disk_usage(_existing(Path(p))).free for p in paths)


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def has_room(paths: Iterable[Path], min_free_bytes: int) -> bool:
    """Whether every file system of ``paths`` has more than ``min_free_bytes`` free."""
    return lowest_free_bytes(paths) > min_free_bytes


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a full disk: ENOSPC/EDQUOT from a file write, or
    SQLite's "database or disk is full" (SQLITE_FULL)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
        exc = orig if isinstance(orig, BaseException) else (exc.__cause__ or exc.__context__)
    return False
