"""The node's STOW-RS endpoint over a real database and spool, in this process."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from sqlalchemy import func, select

from node.config import Settings
from node.dicom.admission import Admission
from node.dicom.intake import InstanceIntake
from node.dicomweb.endpoint import StowServer
from node.dicomweb.stow import StowTarget
from node.refusals import RefusalAudit
from storage import audit
from storage.database import Database
from storage.schema import Instance
from storage.spool import FileStore

TOKEN = "stow-token-0123456789"


class StowNode:
    """The endpoint over a real database and spool, as ``cxrnode serve`` wires it."""

    def __init__(self, tmp_path: Path, **settings) -> None:
        self.settings = Settings(
            data_dir=tmp_path / "data", dicomweb_token=TOKEN, dicomweb_host="127.0.0.1", **settings
        )
        self.db = Database(self.settings.database_url)
        self.db.create_schema()
        spool = FileStore(self.settings.data_dir / "spool")
        admission = Admission("CXRNODE", (), spool.root, 0)
        self.completed = 0
        self.server = StowServer(
            self.settings,
            InstanceIntake(self.settings, self.db, spool, admission),
            RefusalAudit(self.db, 60),
            on_complete=self._completed,
            port=0,
        ).start()

    def _completed(self) -> None:
        self.completed += 1

    def target(self, token: str = TOKEN, study: str = "") -> StowTarget:
        path = f"/dicom-web/studies/{study}" if study else "/dicom-web"
        return StowTarget.parse(f"http://cxr:{token}@127.0.0.1:{self.server.http.port}{path}")

    def post(self, body: bytes, content_type: str) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.http.port, timeout=30)
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"}
        connection.request("POST", "/dicom-web/studies", body, headers)
        response = connection.getresponse()
        answer = response.read()
        return response.status, json.loads(answer) if answer else {}

    def events(self, action: str) -> list[dict]:
        with self.db.reading() as session:
            return [
                audit.as_dict(e) for e in audit.query(session, audit.AuditFilter(action=action))
            ]

    def instances(self) -> int:
        with self.db.reading() as session:
            return session.scalar(select(func.count(Instance.id)))
