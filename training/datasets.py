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
read_nih_labelled_folders  NIH images in class folders beside their label rows (``labels.csv``)
read_kermany        Kermany et al.'s paediatric ``{train,test}/{NORMAL,PNEUMONIA}/`` JPEGs
read_rsna_pneumonia the RSNA Pneumonia Detection Challenge DICOMs with their class file
read_manifest       a generic CSV manifest: image, report, labels, patient id

:func:`mix` combines readers' results into one dataset: targets mapped onto one vocabulary
(a label a source cannot know is masked out of the loss), patient keys put in one namespace per
population, so that the leakage check sees an NIH patient who is in two NIH subsets as one.
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

from models.hl7_escapes import decode_hl7_escapes
from models.labels import VOCABULARIES
from models.sections import INDICATION, extract_sections
from models.targets import (
    UncertainPolicy,
    normal_abnormal_target,
    openi_mesh_targets,
    uncertain_targets,
)
from models.text import compose_report
from training.errors import DatasetError

NORMAL_ABNORMAL = "normal-abnormal"
ABNORMAL = "Abnormal"
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
    source : str
        Which dataset it came from (set where several are mixed; results are reported per
        source, e.g. adults and children apart).
    view : str or None
        The view position where the dataset gives it (``"PA"``, ``"AP"``), for the view check.
    """

    key: str
    patient_id: str
    targets: np.ndarray
    mask: np.ndarray
    image: Path | None = None
    report: str | None = None
    indication: str | None = None
    source: str = ""
    view: str | None = None


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
    """A report or indication cell as a reader sees it: whitespace collapsed, then HL7 escapes
    decoded (IU X-ray's text came from a RIS that escaped it: ``asthma \\T\\ XXXX``), after
    the collapse so that an escaped line break still breaks the line; placeholders are None."""
    if value is None:
        return None
    value = decode_hl7_escapes(" ".join(value.split()))
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
        report = None
        if report_path.exists():
            report = decode_hl7_escapes(report_path.read_text(encoding="utf-8"))
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
                indication=sections.get(INDICATION),
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
    """Targets of an NIH ``Finding Labels`` value (``"Effusion|Mass"``, ``"No Finding"``).

    ``Abnormal`` (in ``normal-abnormal`` and ``abnormal-pneumonia``) is any finding at all; every
    other label is whether the value names it. In the 14-label vocabulary every finding must be
    a label; in the smaller ones, findings they do not name only count towards ``Abnormal``.
    """
    findings = {f.strip() for f in finding_labels.split("|") if f.strip()} - {NIH_NO_FINDING}
    if vocabulary == "nih-chestxray14" and findings - set(names):
        raise DatasetError(f"NIH labels not in {vocabulary}: {sorted(findings - set(names))}")
    return np.array(
        [float(bool(findings)) if name == ABNORMAL else float(name in findings) for name in names],
        dtype=np.float32,
    )


def read_nih_folders(
    root: str | Path,
    *,
    data_entry_csv: str | Path | None = None,
    vocabulary: str = NORMAL_ABNORMAL,
) -> LabelledData:
    """Read NIH images sorted as ``<root>/<split>/{0_normal,1_abnormal}/<Image Index>.png``.

    The folder gives the normal/abnormal target and the split; the patient (and the view)
    comes from the NIH label file when given (else the patient from the image index, whose
    first 8 digits are the patient). Another vocabulary than ``normal-abnormal`` takes the
    targets from the label file's ``Finding Labels``, which must then be given.
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base} is not a directory")
    vocabulary = _vocabulary(vocabulary)
    if vocabulary != NORMAL_ABNORMAL and data_entry_csv is None:
        raise DatasetError(f"{vocabulary!r} targets need the NIH label file (data_entry_csv)")
    names = [label.name for label in VOCABULARIES[vocabulary]]
    patients: dict[str, str] = {}
    findings: dict[str, str] = {}
    views: dict[str, str] = {}
    if data_entry_csv is not None:
        for row in _rows(Path(data_entry_csv)):
            index = row["Image Index"].strip()
            patients[index] = row["Patient ID"].strip().lstrip("0") or "0"
            findings[index] = row["Finding Labels"]
            views[index] = row.get("View Position", "").strip().upper()
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
                targets = np.array([target], dtype=np.float32)
                if vocabulary != NORMAL_ABNORMAL:
                    if path.name not in findings:
                        raise DatasetError(f"{path.name} is not in {Path(data_entry_csv).name}")
                    targets = nih_targets(findings[path.name], vocabulary, names)
                samples.append(
                    Sample(
                        key=path.name,
                        patient_id=patient,
                        targets=targets,
                        mask=_ones(len(targets)),
                        image=path,
                        view=views.get(path.name) or None,
                    )
                )
                split[path.name] = {"valid": "val", "validation": "val"}.get(
                    split_dir.name, split_dir.name
                )
    return LabelledData(
        "NIH ChestX-ray14 (normal/abnormal folders)",
        vocabulary,
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


def read_nih_labelled_folders(
    root: str | Path,
    *,
    labels_csv: str = "labels.csv",
    vocabulary: str = "abnormal-pneumonia",
) -> LabelledData:
    """Read NIH images kept in class folders beside their own NIH label rows.

    The layout of the staged DarkCovidNet subset: ``<root>/No_findings/*.png``,
    ``<root>/Pneumonia/*.png`` and ``<root>/labels.csv``, whose rows are the images' rows of
    NIH's ``Data_Entry_2017`` (``Image Index, Finding Labels, Patient ID, View Position``) with
    the image's ``path`` relative to ``root``. Targets come from ``Finding Labels`` (the folder
    name is only where the file is); a row whose image is not on disk goes to ``missing``.

    Parameters
    ----------
    root : str or pathlib.Path
        The folder holding ``labels.csv`` and the class folders.
    labels_csv : str
        The label file's name in ``root``.
    vocabulary : str
        ``"abnormal-pneumonia"``, ``"normal-abnormal"`` or ``"nih-chestxray14"``.
    """
    vocabulary = _vocabulary(vocabulary)
    base = Path(root)
    names = [label.name for label in VOCABULARIES[vocabulary]]
    samples, missing = [], []
    for row in _rows(base / labels_csv):
        relative = (row.get("path") or row["Image Index"]).strip()
        path = base / relative
        if not path.is_file():
            missing.append(str(path))
            continue
        targets = nih_targets(row["Finding Labels"], vocabulary, names)
        samples.append(
            Sample(
                key=row["Image Index"].strip(),
                patient_id=row["Patient ID"].strip().lstrip("0") or "0",
                targets=targets,
                mask=_ones(len(targets)),
                image=path,
                view=row.get("View Position", "").strip().upper() or None,
            )
        )
    return LabelledData(
        "NIH ChestX-ray14 (labelled folders)", vocabulary, samples, missing, source=NIH_TERMS
    )


KERMANY_TERMS = (
    "Kermany et al., Cell 2018, 'Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
    "Images for Classification', Mendeley Data, DOI 10.17632/rscbjbr9sj.2: CC BY 4.0 (children "
    "aged 1-5, Guangzhou Women and Children's Medical Center; resized to 224x224 by a third "
    "party)"
)
# personN_bacteria_M.jpeg / personN_virus_M.jpeg -> personN; IM-XXXX-YYYY.jpeg and
# NORMAL2-IM-XXXX-YYYY.jpeg -> IM-XXXX (the study number; YYYY counts its images).
_KERMANY_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_KERMANY_IM = re.compile(r"^(?:NORMAL2-)?(IM-\d+)-\d+", re.IGNORECASE)


def kermany_patient(file_name: str) -> str:
    """The patient key in a Kermany file name (unique only within its split folder)."""
    match = _KERMANY_PERSON.match(file_name) or _KERMANY_IM.match(file_name)
    if match is None:
        raise DatasetError(f"{file_name}: not a Kermany file name (personN_... or IM-XXXX-...)")
    return match.group(1)


def read_kermany(root: str | Path, *, vocabulary: str = "abnormal-pneumonia") -> LabelledData:
    """Read Kermany's paediatric chest X-rays: ``<root>/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg``.

    NORMAL is no finding; PNEUMONIA (bacterial or viral, as the file name says) is abnormal
    and pneumonia. The ``train``/``test`` folders are the public split, kept as the given
    split. The file names number patients anew in each split folder, so the patient key is
    ``<split>/<patient>``: the release describes its test set as other patients, which the
    file names cannot confirm.

    Parameters
    ----------
    root : str or pathlib.Path
        The folder holding ``train/`` and ``test/``.
    vocabulary : str
        ``"abnormal-pneumonia"`` or ``"normal-abnormal"``.
    """
    vocabulary = _vocabulary(vocabulary)
    if vocabulary not in ("abnormal-pneumonia", NORMAL_ABNORMAL):
        raise DatasetError("Kermany labels come as 'abnormal-pneumonia' or 'normal-abnormal'")
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base} is not a directory")
    names = [label.name for label in VOCABULARIES[vocabulary]]
    samples, split = [], {}
    for split_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        split_name = {"val": "val", "valid": "val"}.get(split_dir.name.lower(), split_dir.name)
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            kind = class_dir.name.upper()
            if kind not in ("NORMAL", "PNEUMONIA"):
                raise DatasetError(f"{class_dir}: class folder must be NORMAL or PNEUMONIA")
            value = 0.0 if kind == "NORMAL" else 1.0
            targets = np.full(len(names), value, dtype=np.float32)
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                key = f"{split_name}/{path.name}"
                samples.append(
                    Sample(
                        key=key,
                        patient_id=f"{split_name}/{kermany_patient(path.name)}",
                        targets=targets,
                        mask=_ones(len(names)),
                        image=path,
                    )
                )
                split[key] = split_name
    return LabelledData(
        "Kermany paediatric chest X-ray (Guangzhou)",
        vocabulary,
        samples,
        given_split=split,
        source=KERMANY_TERMS,
    )


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
    vocabulary: str = NORMAL_ABNORMAL,
) -> LabelledData:
    """Read RSNA Pneumonia DICOMs as normal (class "Normal") or abnormal (any other class).

    With ``vocabulary = "abnormal-pneumonia"``, "Lung Opacity" (the challenge's evidence of
    pneumonia) is also Pneumonia, "No Lung Opacity / Not Normal" abnormal without it. The view
    comes from the DICOM header. A patient listed in the class file without a DICOM on disk
    goes to ``missing``.
    """
    vocabulary = _vocabulary(vocabulary)
    if vocabulary not in ("abnormal-pneumonia", NORMAL_ABNORMAL):
        raise DatasetError("RSNA labels come as 'abnormal-pneumonia' or 'normal-abnormal'")
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
        targets = [0.0 if names == {"Normal"} else 1.0]
        if vocabulary != NORMAL_ABNORMAL:
            targets.append(1.0 if "Lung Opacity" in names else 0.0)
        samples.append(
            Sample(
                key=patient,
                patient_id=patient,
                targets=np.array(targets, dtype=np.float32),
                mask=_ones(len(targets)),
                image=path,
                view=_dicom_view(path),
            )
        )
    return LabelledData(
        "RSNA Pneumonia Detection Challenge sample",
        vocabulary,
        samples,
        missing,
        source=RSNA_TERMS,
    )


def _dicom_view(path: Path) -> str | None:
    import pydicom  # only the header is read

    view = pydicom.dcmread(path, stop_before_pixels=True).get("ViewPosition", "")
    return str(view).strip().upper() or None


# --- several sources in one dataset ----------------------------------------------------------


def mix(parts: Sequence[tuple[str, LabelledData]], vocabulary: str) -> LabelledData:
    """Put several readers' data into one dataset of one vocabulary.

    Parameters
    ----------
    parts : sequence of (population, LabelledData)
        ``population`` names whose patients a source's patient ids are: sources of one
        population (two NIH subsets) share patients, so their ids stay comparable, while ids
        of different populations (NIH's numbers, Kermany's ``personN``) never meet. The patient
        key becomes ``<population>:<patient>`` and the sample key ``<source>:<key>``.
    vocabulary : str
        The labels of the result. A label a source also has is copied; one it does not have
        is masked out (0 in ``mask``): unknown, not absent.

    Returns
    -------
    LabelledData
        Every sample with its ``source`` set to the part's dataset name; the parts' given
        splits are kept (under the new keys).
    """
    vocabulary = _vocabulary(vocabulary)
    names = [label.name for label in VOCABULARIES[vocabulary]]
    samples, missing, split, sources = [], [], {}, []
    for population, data in parts:
        own = list(data.label_names)
        columns = [own.index(name) if name in own else None for name in names]
        if all(column is None for column in columns):
            raise DatasetError(f"{data.name} has none of the labels of {vocabulary}")
        for sample in data.samples:
            key = f"{data.name}:{sample.key}"
            targets = np.array([0.0 if c is None else sample.targets[c] for c in columns])
            mask = np.array([0.0 if c is None else sample.mask[c] for c in columns])
            samples.append(
                Sample(
                    key=key,
                    patient_id=f"{population}:{sample.patient_id}",
                    targets=targets.astype(np.float32),
                    mask=mask.astype(np.float32),
                    image=sample.image,
                    report=sample.report,
                    indication=sample.indication,
                    source=data.name,
                    view=sample.view,
                )
            )
            if sample.key in data.given_split:
                split[key] = data.given_split[sample.key]
        missing += [f"{data.name}: {line}" for line in data.missing]
        sources.append(f"{data.name}: {data.source}")
    return LabelledData(
        " + ".join(data.name for _, data in parts),
        vocabulary,
        samples,
        missing,
        given_split=split,
        source="; ".join(sources),
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
