"""The start-up check on real SQLite files: a write-ahead log deleted after a kill -9 is
reported, audited and the forgotten instances recorded again; a damaged file stops
``cxrnode serve`` with one line and a non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node import cli
from node.config import Settings
from node.integrity import DatabaseDamaged, check_database, check_file
from storage import audit, audit_chain
from storage.database import Database
from storage.head_journal import HeadJournal
from storage.schema import Instance
from storage.spool import FileStore

REPO = Path(__file__).resolve().parents[2]

# A node process in miniature: the real SCP receives over a real association, then the
# process is killed (-9) or exits cleanly, as the test asks.
RECEIVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import pydicom
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from node.config import Settings
    from node.dicom.receiver import StorageSCP
    from node.orthanc import free_port
    from storage.database import Database
    from storage.spool import FileStore

    data_dir, source, count, ending = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    settings = Settings(dicom_host="127.0.0.1", dicom_port=free_port(), data_dir=data_dir,
                        allowed_calling_aes=("MODALITY",), min_free_disk_mb=0)
    db = Database(settings.database_url)
    db.create_schema()
    scp = StorageSCP(settings, db, FileStore(data_dir / "spool"))
    scp.start()
    ae = AE(ae_title="MODALITY")
    ds = pydicom.dcmread(source)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="CXRNODE")
    for _ in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    if ending == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    scp.stop()
    db.dispose()
    """
)


def receive(data_dir: Path, source: Path, count: int, ending: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", RECEIVE, str(data_dir), str(source), str(count), ending],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == (-9 if ending == "kill" else 0), done.stderr[-2000:]


@pytest.fixture
def source(shared_data: Path) -> Path:
    return sorted((shared_data / "rsna-pneumonia-sample/stage_1_train_images").glob("*.dcm"))[0]


def test_a_deleted_wal_after_kill_9_is_reported_and_the_instances_recorded_again(
    tmp_path, source, monkeypatch, capsys
):
    receive(tmp_path, source, 1, "exit")  # checkpointed into the main file at close
    receive(tmp_path, source, 2, "kill")  # acknowledged, still only in the -wal file
    wal = tmp_path / "cxrnode.db-wal"
    assert wal.stat().st_size > 0
    wal.unlink()
    (tmp_path / "cxrnode.db-shm").unlink(missing_ok=True)

    settings = Settings(data_dir=tmp_path)
    monkeypatch.setenv("CXRNODE_DATA_DIR", str(tmp_path))
    assert cli.main(["audit", "verify"]) == 1  # the admin's check says so too, before a start
    assert "were committed (the head journal" in capsys.readouterr().out
    db = Database(settings.database_url)
    check_file(db)  # the file itself is sound
    with db.transaction() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1  # two acknowledged, gone
    report = check_database(settings, db, FileStore(tmp_path / "spool"))
    assert report.loss and len(report.orphans) == 2 and report.recovered == 2
    assert report.lost_audit_rows > 0
    with db.transaction() as session:
        assert session.scalar(select(func.count(Instance.id))) == 3
        (loss,) = audit.query(session, audit.AuditFilter(action="database.loss_detected"))
        assert loss.outcome == "failure" and loss.detail["orphan_files"] == 2
        assert "audit row(s)" in loss.detail["reason"]
        recovered = audit.query(session, audit.AuditFilter(action="instance.recovered"))
        assert len(recovered) == 2
        assert audit_chain.verify(session).ok
    # Reported once: the next start finds the database and its witnesses agreeing.
    assert not check_database(settings, db, FileStore(tmp_path / "spool")).loss
    assert cli.main(["audit", "verify"]) == 0


def test_a_clean_database_reports_no_loss(tmp_path, source):
    receive(tmp_path, source, 2, "exit")
    settings = Settings(data_dir=tmp_path)
    db = Database(settings.database_url)
    report = check_database(settings, db, FileStore(tmp_path / "spool"))
    # The journal may lag a commit made just before the process exited, never lead it.
    assert not report.loss and 0 < report.journal_seq <= report.head_seq


def flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0:16] = bytes(b ^ 0xFF for b in data[0:16])
    path.write_bytes(bytes(data))


def flip_text(path: Path) -> None:
    """Break the UTF-8 of every stored copy of the spool paths' study folder name."""
    data = bytearray(path.read_bytes())
    marker = b"1.2.826.0.1.3680043"
    at = data.find(marker)
    assert at >= 0
    while at >= 0:
        data[at + 2] = 0xFF
        at = data.find(marker, at + 1)
    path.write_bytes(bytes(data))


def test_cxrnode_serve_refuses_a_damaged_database_with_one_line(tmp_path, source):
    receive(tmp_path, source, 2, "exit")
    flip_text(tmp_path / "cxrnode.db")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CXRNODE_DATA_DIR": str(tmp_path),
        "CXRNODE_HL7_PORT": "0",
        "CXRNODE_DICOM_HOST": "127.0.0.1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("cxrnode: database ") and "is damaged" in lines[0]
    assert "3680043" not in lines[0]  # the undecodable text (a UID) is not repeated


def test_check_file_names_a_file_whose_header_is_damaged(tmp_path, source):
    receive(tmp_path, source, 1, "exit")
    flip_header(tmp_path / "cxrnode.db")
    with pytest.raises(DatabaseDamaged, match="is damaged.*file is not a database"):
        check_file(Database(Settings(data_dir=tmp_path).database_url))


def test_the_head_journal_follows_every_commit(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    for n in range(3):
        with db.transaction() as session:
            audit.record(session, "node.started", detail={"n": n})
    with db.transaction() as session:
        head = session.get(audit_chain.AuditChainHead, audit_chain.HEAD_ID)
        expected = (head.last_seq, head.last_hash)
    journal = HeadJournal(tmp_path / "node.db").read()
    assert (journal.seq, journal.hash) == expected and journal.seq >= 3
