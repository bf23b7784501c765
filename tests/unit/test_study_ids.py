"""A study's identifiers travel as one value, and still unpack as the audit log's keywords."""

from __future__ import annotations

import dataclasses

import pytest

from node.build import WorkItem
from storage.identifiers import StudyIds


def work_item() -> WorkItem:
    return WorkItem(
        job_id=7,
        run=2,
        study_uid="1.2.826.0.1.3680043.8.498.1",
        accession="ACC-9",
        patient_id="P-9",
        images=(),
        text=None,
        text_source="none",
        reason="first",
        replaces_sr=None,
    )


def test_a_job_names_its_study_by_one_value():
    assert work_item().ids == StudyIds(
        study_uid="1.2.826.0.1.3680043.8.498.1", accession="ACC-9", patient_id="P-9"
    )


def test_the_ids_unpack_as_the_keywords_the_pipeline_passes_to_the_audit_log():
    def audited(**columns):
        return columns

    item = work_item()
    assert audited(**item.ids) == {
        "study_uid": "1.2.826.0.1.3680043.8.498.1",
        "accession": "ACC-9",
        "patient_id": "P-9",
    }
    assert {**item.ids, "sop_uid": "1.2.3"} == item.ids.as_dict() | {"sop_uid": "1.2.3"}
    assert dict(item.ids) == item.ids.as_dict()


def test_the_ids_are_a_value_not_a_mutable_mapping():
    ids = StudyIds(accession="ACC-1")
    assert ids == StudyIds(None, "ACC-1", None)
    assert hash(ids) == hash(StudyIds(accession="ACC-1"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ids.accession = "ACC-2"  # type: ignore[misc]
    with pytest.raises(KeyError):
        ids["sop_uid"]
