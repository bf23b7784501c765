"""The retention job: spooled instances of finished studies, and the result files of finished
runs (delivered or failed), are deleted after the retention period, and each purge is audited.
Database rows stay: the audit trail outlives the pixels."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from pathlib import Path

from node.config import Settings
from storage import audit
from storage.actions import Action
from storage.database import Database
from storage.retention import mark_purged, purgeable, purgeable_results
from storage.schema import utcnow
from storage.spool import FileStore

log = logging.getLogger(__name__)


class Retention:
    def __init__(
        self, settings: Settings, db: Database, spool: FileStore, results: FileStore | None = None
    ) -> None:
        self.days = settings.retention_days
        self.db = db
        self.spool = spool
        self.results = results

    def purge(self) -> int:
        """Delete what is past retention, in batches; return how many instances were purged
        (the result files of finished runs go too, see :meth:`purge_results`)."""
        if self.days <= 0:
            return 0
        purged = self._purge_instances(utcnow() - timedelta(days=self.days))
        if self.results is not None:
            self.purge_results()
        return purged

    def purge_results(self) -> int:
        """Delete the result files of runs finished before the retention period, audited
        (``result.purged``); return how many runs' files were deleted."""
        if self.days <= 0 or self.results is None:
            return 0
        cutoff = utcnow() - timedelta(days=self.days)
        total = 0
        while True:
            with self.db.transaction() as session:
                batch = purgeable_results(session, cutoff)
                for job in batch:
                    files = self._remove_results(job)
                    job.results_purged_at = utcnow()
                    study = job.study
                    audit.record(
                        session,
                        Action.RESULT_PURGED,
                        study_uid=study.study_uid,
                        accession=study.accession,
                        patient_id=study.patient_id,
                        detail={
                            "run": job.run,
                            "state": job.state,
                            "files": files,
                            "retention_days": self.days,
                        },
                    )
            total += len(batch)
            if not batch:
                break
        if total:
            log.info("retention: purged the results of %d runs", total)
        return total

    def _remove_results(self, job) -> int:
        """Delete a run's result files (those its outbox names) and their emptied folders."""
        removed, folders = 0, set()
        for relpath in {row.path for row in job.outbox}:
            path = self.results.path(relpath)
            if path.exists():
                removed += 1
            self.results.remove(relpath)
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            _remove_empty(folder, self.results.root)
        return removed

    def _purge_instances(self, cutoff) -> int:
        total = 0
        while True:
            with self.db.transaction() as session:
                batch = purgeable(session, cutoff)
                per_study: Counter = Counter()
                studies = {}
                for instance in batch:
                    self.spool.remove(instance.path)
                    mark_purged(instance)
                    per_study[instance.study_id] += 1
                    studies[instance.study_id] = instance.study
                for study_id, count in per_study.items():
                    study = studies[study_id]
                    audit.record(
                        session,
                        Action.STUDY_PURGED,
                        study_uid=study.study_uid,
                        accession=study.accession,
                        patient_id=study.patient_id,
                        detail={"instances": count, "retention_days": self.days},
                    )
            total += len(batch)
            if not batch:
                break
        if total:
            log.info("retention: purged %d instances", total)
        return total


def _remove_empty(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``root`` while they are empty."""
    root = root.resolve()
    folder = folder.resolve()
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's files), or already gone
            return
        folder = folder.parent
