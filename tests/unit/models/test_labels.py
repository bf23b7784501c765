"""Label vocabularies: complete, unambiguous, and consistent with the DICOM standard's codes."""

from __future__ import annotations

import pytest
from pydicom.sr.codedict import codes

from models.labels import (
    LOCAL_SCHEME,
    NIH_CHESTXRAY14,
    NORMAL_ABNORMAL,
    SNOMED_CT,
    VOCABULARIES,
    Label,
)

NIH_NAMES = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
]


def test_nih_vocabulary_has_the_fourteen_dataset_labels_in_order():
    assert [label.name for label in NIH_CHESTXRAY14] == NIH_NAMES


@pytest.mark.parametrize("vocabulary", list(VOCABULARIES.values()))
def test_each_vocabulary_codes_each_concept_once(vocabulary: tuple[Label, ...]):
    keys = [(label.coding_scheme, label.code_value) for label in vocabulary]
    assert len(set(keys)) == len(keys)
    assert {label.coding_scheme for label in vocabulary} <= {SNOMED_CT, LOCAL_SCHEME}


@pytest.mark.parametrize(
    ("name", "dicom_keyword"),
    [
        ("Edema", "PulmonaryEdema"),
        ("Effusion", "PleuralEffusion"),
        ("Pneumothorax", "Pneumothorax"),
        ("Abnormal", "Abnormal"),
    ],
)
def test_codes_the_dicom_standard_lists_carry_its_value_and_meaning(name, dicom_keyword):
    label = next(label for label in NIH_CHESTXRAY14 + NORMAL_ABNORMAL if label.name == name)
    standard = getattr(codes.SCT, dicom_keyword)
    assert (label.code_value, label.code_meaning) == (standard.value, standard.meaning)


def test_labels_refuse_codes_dicom_cannot_carry():
    with pytest.raises(ValueError, match="code_value"):
        Label("X", "12345678901234567", SNOMED_CT, "Too long a code")
    with pytest.raises(ValueError, match="code_meaning"):
        Label("X", "1", SNOMED_CT, "")
