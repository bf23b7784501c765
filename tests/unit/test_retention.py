"""The retention job on a real SQLite file and spool."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from node.config import Settings
from node.retention import Retention
from storage import audit
from storage.database import Database
from storage.schema import Embedding, Instance, StudyState, utcnow
from storage.spool import FileStore
from storage.studies import add_instance
from support.embeddings import finished_run
from support.instances import frontal_cr


def spool_study(db: Database, spool: FileStore, study_uid: str, state: str, age: timedelta):
    header = frontal_cr(study_uid, series_uid=None, patient_id="P", transfer_syntax=None)
    stored = spool.write(f"{study_uid}/i.dcm", b"DICM")
    with db.transaction() as session:
        instance = add_instance(
            session, header, relpath=stored.relpath, size=4, sha256="0", calling_ae="X"
        )
        instance.study.state = state
        instance.study.last_received_at = utcnow() - age
    return spool.path(stored.relpath)


def test_finished_studies_past_retention_are_purged_and_audited(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    spool = FileStore(tmp_path / "spool")
    old_done = spool_study(db, spool, "1.1", StudyState.DONE, timedelta(days=31))
    old_waiting = spool_study(db, spool, "1.2", StudyState.AWAITING_REPORT, timedelta(days=31))
    new_done = spool_study(db, spool, "1.3", StudyState.DONE, timedelta(days=1))
    for study_uid in ("1.1", "1.3"):
        finished_run(db, study_uid, [[1.0, 0.0]])

    assert Retention(Settings(retention_days=30), db, spool).purge() == 1
    assert not old_done.exists()
    assert old_waiting.exists() and new_done.exists()  # unfinished or recent: kept
    with db.transaction() as session:
        purged = session.query(Instance).filter(Instance.purged_at.is_not(None)).all()
        assert [i.sop_uid for i in purged] == ["1.1.1"]
        (event,) = audit.query(session, audit.AuditFilter(action="study.purged"))
        assert event.study_uid == "1.1" and event.detail["instances"] == 1
        # Its embeddings went with its images; the recent study's stay.
        assert event.detail["embeddings"] == 1
        kept = session.scalars(select(Embedding.sop_uid)).all()
        assert kept == ["1.3.1.0"]
    assert Retention(Settings(retention_days=30), db, spool).purge() == 0


def test_zero_retention_keeps_everything(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    spool = FileStore(tmp_path / "spool")
    path = spool_study(db, spool, "1.1", StudyState.DONE, timedelta(days=3650))
    assert Retention(Settings(retention_days=0), db, spool).purge() == 0
    assert path.exists()
