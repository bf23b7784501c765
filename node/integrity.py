"""The start-up check: is the database whole, and does it still know what the node accepted?

Two failures it tells apart:

- **A damaged file** (a flipped bit, a truncated page): SQLite's ``quick_check`` fails, or the
  rows the node reads at start cannot be decoded. The node refuses to start with one line
  saying so (:class:`DatabaseDamaged`), never a traceback.
- **A database that went back in time** (its write-ahead log deleted after a crash): the file
  is sound but lost its last commits. Two witnesses outside it say so: the audit head journal
  (``storage.head_journal``: the chain's head is behind what was committed) and the spool
  (instance files, each written and fsynced before its Success, that no row names). The loss is
  logged and audited (``database.loss_detected``, outcome failure); the spooled instances the
  database forgot are recorded again (``instance.recovered``), so nothing acknowledged is lost
  for good. The node then starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from node.config import Settings
from node.dicom.classify import classify
from node.errors import CxrNodeError
from storage import audit
from storage.actions import Action
from storage.audit import Outcome
from storage.audit_chain import HEAD_ID
from storage.database import Database
from storage.identifiers import StudyIds
from storage.schema import AuditChainHead, Instance
from storage.spool import FileStore
from storage.studies import InstanceHeader, add_instance, find_instance

log = logging.getLogger(__name__)

_LISTED = 20  # orphan files named in the audit event; the count covers them all


class DatabaseDamaged(CxrNodeError):
    """The database file is damaged: the node must not start on it."""


@dataclass
class IntegrityReport:
    """What the start-up check found."""

    head_seq: int = 0
    journal_seq: int | None = None
    lost_audit_rows: int = 0  # journal ahead of the database's head
    head_mismatch: bool = False  # same number, another hash
    orphans: list[str] = field(default_factory=list)  # spool files no instance row names
    recovered: int = 0

    @property
    def loss(self) -> bool:
        return bool(self.lost_audit_rows or self.head_mismatch or self.orphans)


def check_file(db: Database) -> None:
    """Refuse a damaged SQLite file before anything else reads it.

    Raises
    ------
    DatabaseDamaged
        When ``PRAGMA quick_check`` fails or the file cannot be opened as a database.
    """
    if db.path is None:
        return
    try:
        with db.engine.connect() as connection:
            rows = [r[0] for r in connection.exec_driver_sql("PRAGMA quick_check(5)")]
    except (DBAPIError, sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise damaged(db, exc) from None
    if rows != ["ok"]:
        raise DatabaseDamaged(_damaged_message(db, "; ".join(str(r) for r in rows)))


def damaged(db: Database, exc: BaseException) -> DatabaseDamaged:
    """The one-line error for a database that failed while the node read it at start."""
    cause = getattr(exc, "orig", None) or exc
    # SQLite quotes the undecodable text, which may be a UID or a name: never in the log.
    what = str(cause).split(" with text ")[0]
    return DatabaseDamaged(_damaged_message(db, f"{type(cause).__name__}: {what}"))


def _damaged_message(db: Database, what: str) -> str:
    where = db.path or "the database"
    return (
        f"database {where} is damaged ({what[:200]}); the node will not start on it. Restore "
        "it from a backup, or move it and its -wal file aside to start afresh: the spooled "
        "instances are recorded again at the next start"
    )


def check_database(settings: Settings, db: Database, spool: FileStore) -> IntegrityReport:
    """Compare the database with the head journal and the spool; audit and repair a loss.

    Run at start, after the schema is current and before anything is received. Only for the
    SQLite file of a single node: on PostgreSQL several nodes write the spool at once, and a
    file being received by another would look forgotten.

    Raises
    ------
    DatabaseDamaged
        When the rows it reads cannot be decoded.
    """
    report = IntegrityReport()
    if db.path is None or db.journal is None:
        return report
    try:
        with db.transaction() as session:
            head = session.get(AuditChainHead, HEAD_ID)
            report.head_seq = head.last_seq if head is not None else 0
            _compare_journal(db, report, head.last_hash if head is not None else None)
            known = set(session.scalars(select(Instance.path)))
            orphans = sorted(_spool_files(spool) - known)
            report.recovered = _recover(session, settings, spool, orphans, report)
            if report.loss:
                _report_loss(session, report)
        if report.loss or report.journal_seq is None or report.journal_seq < report.head_seq:
            _rebase_journal(db)
    except (DBAPIError, sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise damaged(db, exc) from None
    return report


def _rebase_journal(db: Database) -> None:
    """The database's head, now reported, is the journal's baseline (also when the journal
    is behind: a process that died between a commit and its journal write)."""
    with db.reading() as session:
        head = session.get(AuditChainHead, HEAD_ID)
        if head is not None:
            db.journal.write(head.last_seq, head.last_hash, force=True)


def _compare_journal(db: Database, report: IntegrityReport, head_hash: str | None) -> None:
    journal = db.journal.read()
    if journal is None:
        return
    report.journal_seq = journal.seq
    if journal.seq > report.head_seq:
        report.lost_audit_rows = journal.seq - report.head_seq
    elif journal.seq == report.head_seq and journal.hash != head_hash:
        report.head_mismatch = True


def _spool_files(spool: FileStore) -> set[str]:
    """Relative paths of the instance files in the spool (not the temporary files of writes
    that never finished, which were never acknowledged)."""
    found = set()
    for folder, _, names in os.walk(spool.root):
        for name in names:
            if name.endswith(".dcm") and not name.startswith("."):
                found.add(Path(folder, name).relative_to(spool.root).as_posix())
    return found


def _report_loss(session, report: IntegrityReport) -> None:
    what = []
    if report.lost_audit_rows:
        what.append(
            f"{report.lost_audit_rows} audit row(s) after seq {report.head_seq} were committed "
            f"and are gone (head journal at seq {report.journal_seq})"
        )
    if report.head_mismatch:
        what.append(f"the audit head at seq {report.head_seq} differs from the head journal's")
    if report.orphans:
        what.append(f"{len(report.orphans)} spooled instance(s) have no database record")
    message = "; ".join(what)
    log.error("DATABASE LOST COMMITTED DATA (its -wal file deleted or replaced?): %s", message)
    audit.record(
        session,
        Action.DATABASE_LOSS_DETECTED,
        Outcome.FAILURE,
        detail={
            "reason": message,
            "head_seq": report.head_seq,
            "journal_seq": report.journal_seq,
            "orphan_files": len(report.orphans),
            "orphans": report.orphans[:_LISTED],
        },
    )


def _recover(
    session, settings: Settings, spool: FileStore, orphans: list[str], report: IntegrityReport
) -> int:
    """Record the forgotten spooled instances again, each audited ``instance.recovered``, and
    list them, and those that cannot be read, in ``report.orphans``. A file whose SOP Instance
    UID is recorded under another name is a copy refused as a conflicting duplicate, or never
    answered, before a crash: it is deleted, and is no loss."""
    recovered = 0
    for relpath in orphans:
        try:
            data = spool.read(relpath)
            # Pixel Data deferred, not skipped: the classification asks whether it is there.
            header = _header(dcmread(spool.path(relpath), defer_size=1024), settings)
        except Exception as exc:  # a file the receiver would have refused: say so, keep it
            log.warning("spool file %s cannot be recovered: %s", relpath, type(exc).__name__)
            report.orphans.append(relpath)
            continue
        if header is None:
            report.orphans.append(relpath)
            continue
        if find_instance(session, header.sop_uid) is not None:
            spool.remove(relpath)
            continue
        report.orphans.append(relpath)
        add_instance(
            session,
            header,
            relpath=relpath,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            calling_ae=None,
        )
        audit.record(
            session,
            Action.INSTANCE_RECOVERED,
            Outcome.WARNING,
            ids=StudyIds.of(header),
            series_uid=header.series_uid,
            sop_uid=header.sop_uid,
            detail={"reason": "spooled but missing from the database", "path": relpath},
        )
        recovered += 1
    return recovered


def _header(ds, settings: Settings) -> InstanceHeader | None:
    """The instance header as the SCP records it (``StorageSCP._read_header``)."""
    sop_uid = str(ds.get("SOPInstanceUID", "")).strip()
    study_uid = str(ds.get("StudyInstanceUID", "")).strip()
    if not sop_uid or not study_uid or len(study_uid) > 64:
        return None
    verdict = classify(ds, assume_chest_without_body_part=settings.assume_chest_without_body_part)
    meta = getattr(ds, "file_meta", None)
    return InstanceHeader(
        sop_uid=sop_uid,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        study_uid=study_uid,
        series_uid=_short(ds.get("SeriesInstanceUID")),
        modality=_short(ds.get("Modality"), 16),
        patient_id=_short(ds.get("PatientID")),
        accession=_short(ds.get("AccessionNumber")),
        transfer_syntax=str(meta.get("TransferSyntaxUID")) if meta is not None else None,
        view=verdict.view,
        processable=verdict.processable,
        skip_reason=None if verdict.processable else verdict.reason,
    )


def _short(value: object, limit: int = 64) -> str | None:
    text_value = str(value).strip() if value is not None else ""
    return text_value[:limit] or None
