"""A worker's hand-off to the result builders, as the tests of the builders need it."""

from __future__ import annotations

from node.build import WorkItem


def work_item(study_uid: str, run: int = 1) -> WorkItem:
    """A first run of one study without report text, for ``ResultJob``."""
    return WorkItem(
        job_id=1,
        run=run,
        study_uid=study_uid,
        accession=None,
        patient_id="P1",
        images=(),
        text=None,
        text_source="none",
        reason="first",
        replaces_sr=None,
    )
