"""Dataset readers on the real staged data (and on layouts built from real files)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.labels import CHEXPERT_14, OPENI_MESH
from models.preprocess import dicom_to_display, image_file_to_display
from models.text import TextCleaning
from training.datasets import (
    read_iu_xray,
    read_manifest,
    read_mimic_cxr,
    read_nih_chestxray14,
    read_nih_folders,
    read_openi_xml,
    read_r2gen,
    read_rsna_pneumonia,
)
from training.errors import DatasetError
from training.loader import sample_text


def test_iu_reports_give_normal_abnormal_targets_and_sectioned_text(iu_dir: Path) -> None:
    data = read_iu_xray(iu_dir / "indiana_reports.csv")
    # 3,851 reports; those whose MeSH field gives no label ("No Indexing") are left out.
    assert 3700 < len(data.samples) < 3851
    first = next(s for s in data.samples if s.key == "1")
    assert first.targets.tolist() == [0.0]  # MeSH "normal"
    assert first.report.startswith("FINDINGS: The cardiac silhouette")
    assert "IMPRESSION: Normal chest" in first.report
    assert first.indication == "Positive TB test"
    second = next(s for s in data.samples if s.key == "2")
    assert second.targets.tolist() == [1.0]  # Cardiomegaly/borderline


def test_hl7_escapes_in_iu_text_are_decoded_where_the_reports_are_read(iu_dir: Path) -> None:
    # Report 2324's indication holds "\\T\\", HL7's escaped "&"; the text cleaning no longer
    # decodes escapes, so the reader does, and the model reads what it read before.
    for data in (
        read_iu_xray(iu_dir / "indiana_reports.csv"),
        read_r2gen(iu_dir / "annotation.json", iu_dir / "indiana_reports.csv"),
    ):
        sample = next(s for s in data.samples if s.key == "2324")
        assert sample.indication == "pt states hx of asthma & XXXX"
        assert sample_text(sample, "indication", TextCleaning()) == "pt states hx of asthma & xxxx"


def test_iu_reports_as_openi_mesh_multilabel(iu_dir: Path) -> None:
    data = read_iu_xray(iu_dir / "indiana_reports.csv", vocabulary="openi-mesh-22")
    targets = np.stack([s.targets for s in data.samples])
    assert targets.shape[1] == len(OPENI_MESH)
    # The vocabulary is the 22 most frequent findings: Opacity (432 reports) comes first.
    assert targets[:, 0].sum() == 432


def test_r2gen_annotation_keeps_its_published_split(iu_dir: Path) -> None:
    data = read_r2gen(iu_dir / "annotation.json", iu_dir / "indiana_reports.csv")
    counts = {name: len(data.split(name)) for name in ("train", "val", "test")}
    assert counts["train"] > 2900 and counts["val"] > 350 and counts["test"] > 350
    assert all(s.report for s in data.samples)


def test_openi_xml_reports_are_read_from_the_original_schema(iu_dir: Path, tmp_path: Path) -> None:
    # An ecgen-radiology XML in Open-i's schema, filled with a real IU report (uid 2).
    row = next(
        r for r in csv.DictReader((iu_dir / "indiana_reports.csv").open()) if r["uid"] == "2"
    )
    (tmp_path / "2.xml").write_text(
        f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR2"/><MedlineCitation><Article><Abstract>
<AbstractText Label="INDICATION">{row["indication"]}</AbstractText>
<AbstractText Label="FINDINGS">{row["findings"]}</AbstractText>
<AbstractText Label="IMPRESSION">{row["impression"]}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>Cardiomegaly/borderline</major><major>Pulmonary Artery/enlarged</major></MeSH>
<parentImage id="CXR2_IM-0652-1001"/></eCitation>"""
    )
    data = read_openi_xml(tmp_path, vocabulary="openi-mesh-22", images_dir=tmp_path)
    (sample,) = data.samples
    assert sample.key == "CXR2"
    assert sample.targets[[label.name for label in OPENI_MESH].index("Cardiomegaly")] == 1.0
    assert sample.report.startswith("FINDINGS: Borderline cardiomegaly")
    assert sample.indication == "Preop bariatric surgery."
    assert data.missing == ["CXR2_IM-0652-1001.png"]  # reported, not fatal


def test_mimic_layout_with_uncertain_labels(
    shared_data: Path, iu_dir: Path, tmp_path: Path
) -> None:
    # The MIMIC-CXR folder layout built from real files: an RSNA DICOM and an IU report.
    study = tmp_path / "files" / "p10" / "p10000032" / "s50414267"
    study.mkdir(parents=True)
    source = next((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    shutil.copy(source, study / "02aa804e.dcm")
    study.with_suffix(".txt").write_text(
        "INDICATION: cough\nFINDINGS: Borderline cardiomegaly. Clear lungs.\n"
        "IMPRESSION: No acute findings."
    )
    labels = tmp_path / "chexpert.csv"
    names = [label.name for label in CHEXPERT_14]
    values = {"Cardiomegaly": "-1.0", "Lung Opacity": "0.0", "Edema": "1.0"}
    labels.write_text(
        "subject_id,study_id," + ",".join(names) + "\n"
        "10000032,50414267," + ",".join(values.get(n, "") for n in names) + "\n"
        "10000099,50000001," + ",".join("" for _ in names) + "\n"
    )
    ignored = read_mimic_cxr(tmp_path, labels, uncertain="ignore")
    (sample,) = ignored.samples  # the second study has no files: reported, left out
    assert len(ignored.missing) == 2
    cardio = names.index("Cardiomegaly")
    assert sample.mask[cardio] == 0.0 and sample.targets[names.index("Edema")] == 1.0
    assert sample.indication == "cough"
    assert dicom_to_display(__import__("pydicom").dcmread(sample.image)).shape == (1024, 1024)
    ones = read_mimic_cxr(tmp_path, labels, uncertain="ones")
    assert ones.samples[0].targets[cardio] == 1.0 and ones.samples[0].mask[cardio] == 1.0


def test_nih_labels_for_the_images_on_disk(shared_data: Path, nih_data_entry: Path) -> None:
    data = read_nih_chestxray14(nih_data_entry, [shared_data / "nih-chestxray14-samples"])
    by_key = {s.key: s for s in data.samples}
    assert set(by_key) == {
        "00000001_000.png",
        "00000002_000.png",
        "00000013_003.png",
        "00027426_000.png",
    }
    names = data.label_names
    assert by_key["00000001_000.png"].targets[names.index("Cardiomegaly")] == 1.0
    assert by_key["00000002_000.png"].targets.sum() == 0.0  # No Finding
    assert by_key["00000013_003.png"].patient_id == "13"
    assert "not on disk" in data.missing[0]


def test_nih_folders_carry_split_target_and_patient(nih_thumbs: Path, nih_data_entry: Path) -> None:
    data = read_nih_folders(nih_thumbs, data_entry_csv=nih_data_entry)
    assert len(data.samples) == 1000
    assert {n: len(data.split(n)) for n in ("train", "val", "test")} == {
        "train": 600, "val": 200, "test": 200,
    }  # fmt: skip
    assert sum(s.targets[0] for s in data.split("test")) == 100


def test_rsna_dicoms_with_their_classes(shared_data: Path) -> None:
    data = read_rsna_pneumonia(shared_data / "rsna-pneumonia-sample")
    assert len(data.samples) == 12
    assert len(data.missing) == 4  # listed in the class file, kept aside by the staging
    assert {s.targets[0] for s in data.samples} == {0.0, 1.0}


def test_manifest_reports_missing_images_and_rejects_unknown_labels(
    shared_data: Path, tmp_path: Path
) -> None:
    image = shared_data / "nih-chestxray14-samples" / "00000001_000.png"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "image,report,patient_id,labels\n"
        f"{image},heart is enlarged,1,Cardiomegaly\n"
        "gone.png,,2,\n"
        f"{image},clear lungs,3,\n"
    )
    data = read_manifest(manifest, vocabulary="nih-chestxray14")
    assert len(data.samples) == 2 and data.missing[0].endswith("gone.png")
    assert data.samples[0].targets[data.label_names.index("Cardiomegaly")] == 1.0
    manifest.write_text(f"image,patient_id,labels\n{image},1,Unicorn\n")
    with pytest.raises(DatasetError, match="Unicorn"):
        read_manifest(manifest, vocabulary="nih-chestxray14")


def test_png_and_dicom_exports_of_one_image_read_alike(shared_data: Path) -> None:
    png = image_file_to_display(shared_data / "nih-chestxray14-samples" / "00000001_000.png")
    assert png.shape == (1024, 1024) and png.min() >= 0.0 and png.max() <= 1.0
    dicom = image_file_to_display(
        shared_data
        / "siim-acr-pneumothorax-sample"
        / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    )
    mono1 = image_file_to_display(shared_data / "siim-acr-pneumothorax-sample" / "Fake_MONOHR1.dcm")
    assert dicom.shape == mono1.shape == (1024, 1024)
    # Same stored pixels, header says MONOCHROME1: the display is the inverse image.
    assert np.corrcoef(dicom.ravel(), mono1.ravel())[0, 1] < -0.99
