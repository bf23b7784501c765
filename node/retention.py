"""The retention job: spooled instances of finished studies are deleted after the retention
period, and each purge is audited. Database rows stay: the audit trail outlives the pixels."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from node.config import Settings
from storage import audit
from storage.database import Database
from storage.retention import mark_purged, purgeable
from storage.schema import utcnow
from storage.spool import FileStore

log = logging.getLogger(__name__)


class Retention:
    def __init__(self, settings: Settings, db: Database, spool: FileStore) -> None:
        self.days = settings.retention_days
        self.db = db
        self.spool = spool

    def purge(self) -> int:
        """Delete what is past retention, in batches; return how many instances were purged."""
        if self.days <= 0:
            return 0
        cutoff = utcnow() - timedelta(days=self.days)
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
                        "study.purged",
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
