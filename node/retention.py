"""The retention job: spooled instances of finished studies, and the result files of finished
runs (delivered or failed), are deleted after the retention period, and each purge is audited.
A study's stored embeddings go with its instances (they are what the pixels looked like to the
model). The other rows stay: the audit trail outlives the pixels."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session

from node.config import Settings
from storage import audit, embeddings
from storage.actions import Action
from storage.database import Database
from storage.identifiers import StudyIds
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
        total = self._in_batches(partial(self._purge_results_batch, cutoff=cutoff))
        if total:
            log.info("retention: purged the results of %d runs", total)
        return total

    def _purge_instances(self, cutoff: datetime) -> int:
        total = self._in_batches(partial(self._purge_instances_batch, cutoff=cutoff))
        if total:
            log.info("retention: purged %d instances", total)
        return total

    def _in_batches(self, purge_batch: Callable[[Session], int]) -> int:
        """Run ``purge_batch`` in a transaction of its own until it finds nothing more to
        purge; return how much it purged in all."""
        total = 0
        while True:
            with self.db.transaction() as session:
                purged = purge_batch(session)
            if not purged:
                return total
            total += purged

    def _purge_results_batch(self, session: Session, cutoff: datetime) -> int:
        batch = purgeable_results(session, cutoff)
        for job in batch:
            files = self._remove_results(job)
            job.results_purged_at = utcnow()
            audit.record(
                session,
                Action.RESULT_PURGED,
                ids=StudyIds.of(job.study),
                detail={
                    "run": job.run,
                    "state": job.state,
                    "files": files,
                    "retention_days": self.days,
                },
            )
        return len(batch)

    def _purge_instances_batch(self, session: Session, cutoff: datetime) -> int:
        batch = purgeable(session, cutoff)
        per_study: Counter = Counter()
        studies = {}
        for instance in batch:
            self.spool.remove(instance.path)
            mark_purged(instance)
            per_study[instance.study_id] += 1
            studies[instance.study_id] = instance.study
        for study_id, count in per_study.items():
            audit.record(
                session,
                Action.STUDY_PURGED,
                ids=StudyIds.of(studies[study_id]),
                detail={
                    "instances": count,
                    "embeddings": embeddings.delete_of_studies(session, [study_id]),
                    "retention_days": self.days,
                },
            )
        return len(batch)

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
