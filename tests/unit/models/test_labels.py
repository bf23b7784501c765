"""Label vocabularies: complete, unambiguous, and consistent with the DICOM standard's codes."""

from __future__ import annotations

import pytest
from pydicom.sr.codedict import codes

from models.labels import (
    CHEXPERT_14,
    LOCAL_SCHEME,
    NIH_CHESTXRAY14,
    NORMAL_ABNORMAL,
    OPENI_MESH,
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


CHEXPERT_NAMES = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
ALL_LABELS = [label for vocabulary in VOCABULARIES.values() for label in vocabulary]


def test_nih_vocabulary_has_the_fourteen_dataset_labels_in_order():
    assert [label.name for label in NIH_CHESTXRAY14] == NIH_NAMES


def test_chexpert_vocabulary_has_the_fourteen_csv_columns_in_order():
    assert [label.name for label in CHEXPERT_14] == CHEXPERT_NAMES


def test_openi_vocabulary_has_twenty_two_findings():
    assert len(OPENI_MESH) == 22 and len({label.name for label in OPENI_MESH}) == 22


def test_one_concept_has_one_code_in_every_vocabulary():
    codes_by_meaning: dict[str, set[tuple[str, str]]] = {}
    for label in ALL_LABELS:
        codes_by_meaning.setdefault(label.code_meaning, set()).add(
            (label.coding_scheme, label.code_value)
        )
    assert {m: c for m, c in codes_by_meaning.items() if len(c) > 1} == {}


def test_cardiomegaly_avoids_the_code_snomed_reassigned():
    # pydicom names 287272002 "Cardiomegaly" (DICOM echo context groups); SNOMED CT now
    # means "Enlarged septal foramen of heart" by it.
    assert codes.SCT.Cardiomegaly.value == "287272002"
    assert {label.code_value for label in ALL_LABELS if label.name == "Cardiomegaly"} == {"8186001"}


@pytest.mark.parametrize("vocabulary", list(VOCABULARIES.values()))
def test_each_vocabulary_codes_each_concept_once(vocabulary: tuple[Label, ...]):
    keys = [(label.coding_scheme, label.code_value) for label in vocabulary]
    assert len(set(keys)) == len(keys)
    assert {label.coding_scheme for label in vocabulary} <= {SNOMED_CT, LOCAL_SCHEME}


@pytest.mark.parametrize(
    ("vocabulary", "name", "dicom_keyword"),
    [
        (NIH_CHESTXRAY14, "Edema", "PulmonaryEdema"),
        (NIH_CHESTXRAY14, "Effusion", "PleuralEffusion"),
        (NIH_CHESTXRAY14, "Pneumothorax", "Pneumothorax"),
        (NORMAL_ABNORMAL, "Abnormal", "Abnormal"),
        (CHEXPERT_14, "Edema", "PulmonaryEdema"),
        (CHEXPERT_14, "Pleural Effusion", "PleuralEffusion"),
        (CHEXPERT_14, "Pneumothorax", "Pneumothorax"),
        (OPENI_MESH, "Pleural Effusion", "PleuralEffusion"),
        (OPENI_MESH, "Nodule", "Nodule"),
    ],
)
def test_codes_the_dicom_standard_lists_carry_its_value_and_meaning(
    vocabulary, name, dicom_keyword
):
    label = next(label for label in vocabulary if label.name == name)
    standard = getattr(codes.SCT, dicom_keyword)
    assert (label.code_value, label.code_meaning) == (standard.value, standard.meaning)


@pytest.mark.parametrize(
    ("name", "dicom_keyword"),
    [("Calcinosis", "PathologicCalcification"), ("Cicatrix", "Scar")],
)
def test_openi_codes_from_the_dicom_standard_keep_its_value(name, dicom_keyword):
    label = next(label for label in OPENI_MESH if label.name == name)
    assert label.code_value == getattr(codes.SCT, dicom_keyword).value


def test_labels_refuse_codes_dicom_cannot_carry():
    with pytest.raises(ValueError, match="code_value"):
        Label("X", "12345678901234567", SNOMED_CT, "Too long a code")
    with pytest.raises(ValueError, match="code_meaning"):
        Label("X", "1", SNOMED_CT, "")
