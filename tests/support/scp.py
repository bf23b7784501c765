"""The node's storage SCP started on a loopback port for a test, with a database and spool of
its own under the test's folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from node.config import Settings
from node.dicom.receiver import StorageSCP
from node.orthanc import free_port
from storage.database import Database
from storage.spool import FileStore


def start_scp(
    tmp_path: Path, on_complete: Callable[[], None] | None = None, **settings
) -> StorageSCP:
    """Start an SCP on a free port of 127.0.0.1 that accepts calling AE ``MODALITY`` (unless
    ``settings`` say otherwise), storing into ``tmp_path/node.db`` and ``tmp_path/spool``. The
    caller stops it."""
    config = Settings(
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        **{"allowed_calling_aes": ("MODALITY",), **settings},
    )
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    server = StorageSCP(config, db, FileStore(tmp_path / "spool"), on_complete=on_complete)
    server.start()
    return server
