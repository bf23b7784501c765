"""Dataset readers: they find files, reports and labels, and nothing else.

Every reader returns a :class:`LabelledData`: one :class:`Sample` per study (or image), with
the targets of one label vocabulary of :mod:`models.labels`, mapped by the explicit rules of
:mod:`models.targets`. Pixels are not read here: :class:`training.loader.SampleDataset` turns a
sample's file into model input through :func:`models.preprocess.image_file_to_display`, the
same route serving takes, so training cannot drift from what the node does.

A file a dataset names but that is not on disk is recorded in ``LabelledData.missing`` and its
sample left out (or kept without an image, for text models); it never stops a run.

Readers
-------
read_iu_xray        IU X-ray / Open-i: ``indiana_reports.csv`` (+ projections and PNGs)
read_r2gen          IU X-ray in the R2Gen ``annotation.json`` layout, with its given split
read_openi_xml      the original Open-i ``ecgen-radiology`` XML reports (+ PNGs)
read_mimic_cxr      MIMIC-CXR layout: DICOM + report txt + CheXpert label CSV (-1/0/1)
read_nih_chestxray14  ``Data_Entry_2017*.csv`` + PNG folders
read_nih_folders    NIH images sorted into ``{split}/{0_normal,1_abnormal}/`` folders
read_rsna_pneumonia the RSNA Pneumonia Detection Challenge DICOMs with their class file
read_manifest       a generic CSV manifest: image, report, labels, patient id
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.labels import VOCABULARIES
from models.targets import (
    UncertainPolicy,
    normal_abnormal_target,
    openi_mesh_targets,
    uncertain_targets,
)
from models.text import compose_report, extract_sections
from training.errors import DatasetError

NORMAL_ABNORMAL = "normal-abnormal"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
NIH_NO_FINDING = "No Finding"
# NIH Image Index: 8-digit patient number, underscore, 3-digit follow-up number.
_NIH_INDEX = re.compile(r"^(\d{8})_\d{3}")


@dataclass(frozen=True, eq=False)
class Sample:
    """One training example.

    Attributes
    ----------
    key : str
        Unique within its dataset (image index, report uid, study id).
    patient_id : str
        What the leakage check groups by.
    targets, mask : numpy.ndarray
        ``(n_labels,)`` float32: 0/1 targets, and 0 where a label is left out of the loss
        (an ignored uncertain label).
    image : pathlib.Path or None
        The frontal image; ``None`` for a text-only example.
    report : str or None
        Report text with its section headings (``FINDINGS: ... IMPRESSION: ...``).
    indication : str or None
        The order's clinical indication.
    """

    key: str
    patient_id: str
    targets: np.ndarray
    mask: np.ndarray
    image: Path | None = None
    report: str | None = None
    indication: str | None = None


@dataclass
class LabelledData:
    """What a reader found.

    Attributes
    ----------
    name : str
        Dataset name, for cards and logs.
    vocabulary : str
        Key of :data:`models.labels.VOCABULARIES` the targets follow.
    samples : list of Sample
    missing : list of str
        Files named by the dataset but absent (their samples are left out or image-less).
    given_split : dict of str to str
        Sample key to split name, where the dataset defines a split (R2Gen, NIH folders).
    source : str
        Provenance and terms of use, for the model card.
    """

    name: str
    vocabulary: str
    samples: list[Sample]
    missing: list[str] = field(default_factory=list)
    given_split: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def label_names(self) -> tuple[str, ...]:
        """Label names in target order."""
        return tuple(label.name for label in VOCABULARIES[self.vocabulary])

    def split(self, name: str) -> list[Sample]:
        """Samples of one given split, in reading order."""
        return [s for s in self.samples if self.given_split.get(s.key) == name]

    def summary(self) -> str:
        """One line: counts of samples, patients, images, missing files."""
        patients = len({s.patient_id for s in self.samples})
        images = sum(s.image is not None for s in self.samples)
        return (
            f"{self.name}: {len(self.samples)} samples, {patients} patients, {images} images, "
            f"{len(self.missing)} missing files"
        )


def _vocabulary(name: str) -> str:
    if name not in VOCABULARIES:
        raise DatasetError(f"unknown label vocabulary {name!r}; known: {sorted(VOCABULARIES)}")
    return name


def _open_text(path: Path) -> io.TextIOBase:
    """Open a CSV, gzipped or not, as UTF-8 text (a BOM is dropped)."""
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with _open_text(path) as handle:
        yield from csv.DictReader(handle)


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    return value if value and value.lower() not in ("none", "none.", "nan") else None


def _mesh_targets(vocabulary: str, mesh: str | None) -> np.ndarray | None:
    if vocabulary == NORMAL_ABNORMAL:
        target = normal_abnormal_target(mesh)
        return None if target is None else np.array([target], dtype=np.float32)
    if vocabulary == "openi-mesh-22":
        return openi_mesh_targets(mesh)
    raise DatasetError(f"IU X-ray labels come as {NORMAL_ABNORMAL!r} or 'openi-mesh-22'")


def _ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


class _FileIndex:
    """File names under some folders, found once (datasets name files, not paths)."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.paths: dict[str, Path] = {}
        for folder in folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        self.paths.setdefault(path.name, path)

    def find(self, *names: str) -> Path | None:
        for name in names:
            if name in self.paths:
                return self.paths[name]
        return None


# --- IU X-ray / Open-i ---------------------------------------------------------------------


def _iu_sample(
    uid: str, targets: np.ndarray, image: Path | None, report: str | None, indication: str | None
) -> Sample:
    """An IU X-ray study: one per patient, so the report uid is also the patient key."""
    return Sample(uid, uid, targets, _ones(len(targets)), image, report or None, indication)


def read_iu_xray(
    reports_csv: str | Path,
    *,
    vocabulary: str = NORMAL_ABNORMAL,
    projections_csv: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> LabelledData:
    """Read IU X-ray reports (``indiana_reports.csv``), with frontal images when given.

    Each report is one study of one patient (the collection has one study per patient), so the
    report uid is also the patient key. Reports whose MeSH field gives no label ("No Indexing",
    empty) are left out.

    Parameters
    ----------
    reports_csv : str or pathlib.Path
        ``uid, MeSH, Problems, image, indication, comparison, findings, impression``.
    vocabulary : str
        ``"normal-abnormal"`` (MeSH is "normal" or not) or ``"openi-mesh-22"``.
    projections_csv, images_dir : optional
        ``indiana_projections.csv`` and the folder of the PNGs: the first frontal image of each
        study is attached; a listed image not on disk goes to ``missing``.
    """
    vocabulary = _vocabulary(vocabulary)
    frontal: dict[str, str] = {}
    if projections_csv is not None:
        for row in _rows(Path(projections_csv)):
            if row.get("projection", "").strip().lower() == "frontal":
                frontal.setdefault(row["uid"].strip(), row["filename"].strip())
    index = _FileIndex([Path(images_dir)]) if images_dir is not None else None
    samples, missing = [], []
    for row in _rows(Path(reports_csv)):
        uid = row["uid"].strip()
        targets = _mesh_targets(vocabulary, row.get("MeSH"))
        if targets is None:
            continue
        report = compose_report(
            {"findings": _clean(row.get("findings")), "impression": _clean(row.get("impression"))}
        )
        image = None
        if index is not None and uid in frontal:
            name = frontal[uid]
            # Kaggle's names drop Open-i's "CXR" prefix and add ".dcm"; accept both spellings.
            image = index.find(name, f"CXR{name.replace('.dcm.png', '.png')}")
            if image is None:
                missing.append(name)
        samples.append(_iu_sample(uid, targets, image, report, _clean(row.get("indication"))))
    return LabelledData("IU X-ray (Open-i) reports", vocabulary, samples, missing, source=IU_TERMS)


IU_TERMS = (
    "Indiana University chest X-ray collection (Open-i, NLM; Demner-Fushman et al., JAMIA 2016). "
    "CC BY-NC-ND 4.0: for measurement only, never for weights the project ships."
)


def read_r2gen(
    annotation_json: str | Path,
    reports_csv: str | Path,
    *,
    vocabulary: str = NORMAL_ABNORMAL,
    images_dir: str | Path | None = None,
) -> LabelledData:
    """Read IU X-ray in the R2Gen layout (``annotation.json``: train/val/test lists).

    The labels come from ``indiana_reports.csv`` (joined on the report uid), the report text
    and the split from the annotation file, which keeps the split others published.
    """
    vocabulary = _vocabulary(vocabulary)
    path = Path(annotation_json)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    by_uid = {row["uid"].strip(): row for row in _rows(Path(reports_csv))}
    index = _FileIndex([Path(images_dir)]) if images_dir is not None else None
    data = json.loads(path.read_text(encoding="utf-8"))
    samples, missing, split = [], [], {}
    for split_name in ("train", "val", "test"):
        for entry in data.get(split_name, []):
            uid = str(entry["id"]).strip()
            row = by_uid.get(uid)
            targets = _mesh_targets(vocabulary, row.get("MeSH")) if row else None
            if targets is None:
                continue
            image = None
            if index is not None and entry.get("image_path"):
                image = index.find(Path(entry["image_path"][0]).name)
                if image is None:
                    missing.append(entry["image_path"][0])
            report, indication = _clean(entry.get("report")), _clean(row.get("indication"))
            samples.append(_iu_sample(uid, targets, image, report, indication))
            split[uid] = split_name
    return LabelledData(
        "IU X-ray (R2Gen split)", vocabulary, samples, missing, given_split=split, source=IU_TERMS
    )


def read_openi_xml(
    xml_dir: str | Path,
    *,
    vocabulary: str = NORMAL_ABNORMAL,
    images_dir: str | Path | None = None,
) -> LabelledData:
    """Read the original Open-i reports (``NLMCXR_reports``: one ``ecgen-radiology`` XML each).

    Labels come from the ``MeSH/major`` terms, text from ``AbstractText`` (FINDINGS,
    IMPRESSION, INDICATION), images from ``parentImage`` ids (``<id>.png`` in ``images_dir``).
    """
    vocabulary = _vocabulary(vocabulary)
    folder = Path(xml_dir)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a directory")
    index = _FileIndex([Path(images_dir)]) if images_dir is not None else None
    samples, missing = [], []
    for path in sorted(folder.glob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            missing.append(f"{path.name} (unreadable: {exc})")
            continue
        uid_node = root.find(".//uId")
        uid = (uid_node.get("id") if uid_node is not None else None) or path.stem
        texts = {
            (node.get("Label") or "").lower(): _clean(node.text)
            for node in root.iter("AbstractText")
        }
        mesh = ";".join((node.text or "").strip() for node in root.iter("major"))
        targets = _mesh_targets(vocabulary, mesh)
        if targets is None:
            continue
        image = None
        images = [node.get("id") for node in root.iter("parentImage") if node.get("id")]
        if index is not None and images:
            image = index.find(f"{images[0]}.png")
            if image is None:
                missing.append(f"{images[0]}.png")
        report = compose_report(
            {"findings": texts.get("findings"), "impression": texts.get("impression")}
        )
        samples.append(_iu_sample(uid, targets, image, report, texts.get("indication")))
    return LabelledData("Open-i XML reports", vocabulary, samples, missing, source=IU_TERMS)


# --- MIMIC-CXR ---------------------------------------------------------------------------------


def read_mimic_cxr(
    root: str | Path,
    labels_csv: str | Path,
    *,
    uncertain: UncertainPolicy | str = UncertainPolicy.ONES,
    metadata_csv: str | Path | None = None,
) -> LabelledData:
    """Read the MIMIC-CXR layout: ``files/pXX/p<subject>/s<study>/`` DICOMs beside ``s<study>.txt``.

    Parameters
    ----------
    root : str or pathlib.Path
        The folder holding ``files/``.
    labels_csv : str or pathlib.Path
        The CheXpert labeller output (``mimic-cxr-2.0.0-chexpert.csv``): ``subject_id,
        study_id`` and the 14 CheXpert columns with 1, 0, -1 or empty.
    uncertain : UncertainPolicy or str
        What -1 becomes (``ignore`` masks it out of the loss).
    metadata_csv : optional
        ``mimic-cxr-2.0.0-metadata.csv``: with it, only PA/AP images are taken (``dicom_id``,
        ``ViewPosition``); without it, the first DICOM of the study.
    """
    vocabulary = "chexpert-14"
    names = [label.name for label in VOCABULARIES[vocabulary]]
    base = Path(root) / "files"
    views: dict[str, str] = {}
    if metadata_csv is not None:
        for row in _rows(Path(metadata_csv)):
            views[row["dicom_id"].strip()] = row.get("ViewPosition", "").strip().upper()
    samples, missing = [], []
    for row in _rows(Path(labels_csv)):
        subject, study = row["subject_id"].strip(), row["study_id"].strip()
        values = [[_chexpert_value(row.get(name)) for name in names]]
        targets, mask = uncertain_targets(values, uncertain)
        folder = base / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        report_path = folder.with_suffix(".txt")
        report = report_path.read_text(encoding="utf-8") if report_path.exists() else None
        if report is None:
            missing.append(str(report_path))
        dicoms = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
        if views:
            dicoms = [p for p in dicoms if views.get(p.stem) in ("PA", "AP")]
        if not dicoms:
            missing.append(f"{folder}/*.dcm")
        if report is None and not dicoms:
            continue
        sections = _report_sections(report)
        samples.append(
            Sample(
                key=study,
                patient_id=subject,
                targets=targets[0],
                mask=mask[0],
                image=dicoms[0] if dicoms else None,
                report=report,
                indication=sections.get("indication"),
            )
        )
    return LabelledData(
        "MIMIC-CXR",
        vocabulary,
        samples,
        missing,
        source="MIMIC-CXR (PhysioNet credentialed access; Johnson et al., Sci Data 2019)",
    )


def _chexpert_value(value: str | None) -> float:
    value = (value or "").strip()
    return float(value) if value else float("nan")


def _report_sections(report: str | None) -> dict[str, str]:
    return extract_sections(report) if report else {}


# --- NIH ChestX-ray14 --------------------------------------------------------------------------

NIH_TERMS = (
    "NIH ChestX-ray14 (NIH Clinical Center; Wang et al., CVPR 2017): no restrictions on use, "
    "with attribution"
)


def read_nih_chestxray14(
    data_entry_csv: str | Path,
    image_dirs: Sequence[str | Path],
    *,
    vocabulary: str = "nih-chestxray14",
    frontal_only: bool = True,
) -> LabelledData:
    """Read NIH ChestX-ray14 labels for the images found under ``image_dirs``.

    The label file lists all 112,120 images; only those present are read, and the count of
    the absent ones is reported (their names would be 112k lines of noise).

    Parameters
    ----------
    data_entry_csv : str or pathlib.Path
        ``Data_Entry_2017*.csv(.gz)``: ``Image Index, Finding Labels, Patient ID, View
        Position``...
    image_dirs : sequence of path
        Folders searched (recursively) for the PNGs.
    vocabulary : str
        ``"nih-chestxray14"`` (14 labels) or ``"normal-abnormal"`` ("No Finding" or not).
    frontal_only : bool
        Keep PA/AP views only (the whole dataset is frontal; kept for subsets that are not).
    """
    vocabulary = _vocabulary(vocabulary)
    index = _FileIndex(Path(d) for d in image_dirs)
    names = [label.name for label in VOCABULARIES[vocabulary]]
    samples, absent = [], 0
    for row in _rows(Path(data_entry_csv)):
        image_name = row["Image Index"].strip()
        path = index.find(image_name)
        if path is None:
            absent += 1
            continue
        if frontal_only and row.get("View Position", "PA").strip().upper() not in ("PA", "AP"):
            continue
        targets = nih_targets(row["Finding Labels"], vocabulary, names)
        samples.append(
            Sample(
                key=image_name,
                patient_id=row["Patient ID"].strip().lstrip("0") or "0",
                targets=targets,
                mask=_ones(len(targets)),
                image=path,
            )
        )
    missing = [f"{absent} images listed in {Path(data_entry_csv).name} are not on disk"]
    return LabelledData(
        "NIH ChestX-ray14", vocabulary, samples, missing if absent else [], source=NIH_TERMS
    )


def nih_targets(finding_labels: str, vocabulary: str, names: Sequence[str]) -> np.ndarray:
    """Targets of an NIH ``Finding Labels`` value (``"Effusion|Mass"``, ``"No Finding"``)."""
    findings = {f.strip() for f in finding_labels.split("|") if f.strip()}
    if vocabulary == NORMAL_ABNORMAL:
        return np.array([0.0 if findings <= {NIH_NO_FINDING} else 1.0], dtype=np.float32)
    unknown = findings - set(names) - {NIH_NO_FINDING}
    if unknown:
        raise DatasetError(f"NIH labels not in {vocabulary}: {sorted(unknown)}")
    return np.array([1.0 if name in findings else 0.0 for name in names], dtype=np.float32)


def read_nih_folders(root: str | Path, *, data_entry_csv: str | Path | None = None) -> LabelledData:
    """Read NIH images sorted as ``<root>/<split>/{0_normal,1_abnormal}/<Image Index>.png``.

    The folder gives the normal/abnormal target and the split; the patient comes from the NIH
    label file when given (else from the image index, whose first 8 digits are the patient).
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base} is not a directory")
    patients: dict[str, str] = {}
    if data_entry_csv is not None:
        for row in _rows(Path(data_entry_csv)):
            patients[row["Image Index"].strip()] = row["Patient ID"].strip().lstrip("0") or "0"
    samples, split = [], {}
    for split_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            target = _folder_target(class_dir.name)
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                match = _NIH_INDEX.match(path.name)
                patient = patients.get(path.name) or (
                    match.group(1).lstrip("0") if match else path.stem
                )
                samples.append(
                    Sample(
                        key=path.name,
                        patient_id=patient,
                        targets=np.array([target], dtype=np.float32),
                        mask=_ones(1),
                        image=path,
                    )
                )
                split[path.name] = {"valid": "val", "validation": "val"}.get(
                    split_dir.name, split_dir.name
                )
    return LabelledData(
        "NIH ChestX-ray14 (normal/abnormal folders)",
        NORMAL_ABNORMAL,
        samples,
        given_split=split,
        source=NIH_TERMS,
    )


def _folder_target(name: str) -> float:
    lowered = name.lower()
    if "abnormal" in lowered:
        return 1.0
    if "normal" in lowered:
        return 0.0
    raise DatasetError(f"class folder {name!r} is neither normal nor abnormal")


# --- RSNA Pneumonia Detection Challenge ------------------------------------------------------

RSNA_TERMS = (
    "RSNA Pneumonia Detection Challenge (2018; NIH ChestX-ray14 images re-encoded as DICOM): "
    "research and commercial use with attribution to RSNA"
)


def read_rsna_pneumonia(
    root: str | Path,
    *,
    class_csv: str = "example_detailed_class_info.csv",
    images: str = "stage_1_train_images",
) -> LabelledData:
    """Read RSNA Pneumonia DICOMs as normal (class "Normal") or abnormal (any other class).

    A patient listed in the class file without a DICOM on disk goes to ``missing``.
    """
    base = Path(root)
    classes: dict[str, set[str]] = {}
    for row in _rows(base / class_csv):
        classes.setdefault(row["patientId"].strip(), set()).add(row["class"].strip())
    samples, missing = [], []
    for patient, names in sorted(classes.items()):
        path = base / images / f"{patient}.dcm"
        if not path.exists():
            missing.append(str(path))
            continue
        target = 0.0 if names == {"Normal"} else 1.0
        samples.append(
            Sample(
                key=patient,
                patient_id=patient,
                targets=np.array([target], dtype=np.float32),
                mask=_ones(1),
                image=path,
            )
        )
    return LabelledData(
        "RSNA Pneumonia Detection Challenge sample",
        NORMAL_ABNORMAL,
        samples,
        missing,
        source=RSNA_TERMS,
    )


# --- generic manifest --------------------------------------------------------------------------


def read_manifest(
    manifest_csv: str | Path,
    *,
    vocabulary: str,
    uncertain: UncertainPolicy | str = UncertainPolicy.IGNORE,
) -> LabelledData:
    """Read a generic CSV manifest.

    Columns: ``patient_id`` (required); ``image`` (path, relative to the manifest), ``report``,
    ``indication`` (optional); labels either as ``labels`` (names separated by ``|`` or ``;``)
    or as one column per label name holding 1, 0, -1 or empty. At least one of ``image`` and
    ``report`` must be present in a row.

    Raises
    ------
    DatasetError
        If a required column is missing or a label is not in the vocabulary.
    """
    vocabulary = _vocabulary(vocabulary)
    path = Path(manifest_csv)
    names = [label.name for label in VOCABULARIES[vocabulary]]
    samples, missing = [], []
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if "patient_id" not in columns:
            raise DatasetError(f"{path.name}: manifest needs a 'patient_id' column")
        per_label = [name for name in names if name in columns]
        if "labels" not in columns and not per_label:
            raise DatasetError(f"{path.name}: needs a 'labels' column or columns named {names}")
        for number, row in enumerate(reader, start=2):
            targets, mask = _manifest_targets(row, names, per_label, uncertain, path, number)
            image = None
            if row.get("image"):
                candidate = (path.parent / row["image"].strip()).resolve()
                if candidate.exists():
                    image = candidate
                else:
                    missing.append(str(candidate))
            report = _clean(row.get("report"))
            if image is None and report is None:
                continue
            samples.append(
                Sample(
                    key=row.get("id") or f"{path.name}:{number}",
                    patient_id=row["patient_id"].strip(),
                    targets=targets,
                    mask=mask,
                    image=image,
                    report=report,
                    indication=_clean(row.get("indication")),
                )
            )
    return LabelledData(f"manifest {path.name}", vocabulary, samples, missing)


def _manifest_targets(
    row: Mapping[str, str],
    names: Sequence[str],
    per_label: Sequence[str],
    uncertain: UncertainPolicy | str,
    path: Path,
    number: int,
) -> tuple[np.ndarray, np.ndarray]:
    if per_label:
        values = [[_chexpert_value(row.get(name)) for name in names]]
        try:
            targets, mask = uncertain_targets(values, uncertain)
        except ValueError as exc:
            raise DatasetError(f"{path.name} line {number}: {exc}") from exc
        return targets[0], mask[0]
    given = {v.strip() for v in re.split(r"[|;]", row.get("labels") or "") if v.strip()}
    given -= {NIH_NO_FINDING, "normal", "Normal"}
    unknown = given - set(names)
    if names == [VOCABULARIES[NORMAL_ABNORMAL][0].name]:
        # A binary manifest lists any finding, or "Abnormal": either means abnormal.
        return np.array([1.0 if given else 0.0], dtype=np.float32), _ones(1)
    if unknown:
        raise DatasetError(f"{path.name} line {number}: labels not in vocabulary: {unknown}")
    targets = np.array([1.0 if n in given else 0.0 for n in names], dtype=np.float32)
    return targets, _ones(len(names))
