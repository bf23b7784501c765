"""Decide from its header whether a received instance is model input, and why not if it is not."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        # Many archives (RSNA, NIH conversions) hold radiographs as Secondary Capture.
        SecondaryCaptureImageStorage,
    }
)
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "PORT CHEST"})
FRONTAL_VIEWS = frozenset({"PA", "AP", "APS", "PAS", "FRONTAL"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LLO", "RLO"})
_CHEST_WORDS = re.compile(r"\b(CHEST|THORAX|THORACIC|CXR|LUNGS?|TORAX|THORAX)\b", re.IGNORECASE)
_LATERAL_WORDS = re.compile(r"\b(LAT|LATERAL|LL|RL)\b", re.IGNORECASE)
_FRONTAL_WORDS = re.compile(r"\b(PA|AP|FRONTAL)\b", re.IGNORECASE)
_HUMAN = {"", "HUMAN", "HOMO SAPIENS"}


@dataclass(frozen=True)
class Classification:
    processable: bool
    view: str | None  # "frontal" | "lateral" | None when unknown or not an image
    reason: str | None  # why it is skipped, or what was assumed to process it


def classify(ds: Dataset, *, assume_chest_without_body_part: bool = True) -> Classification:
    """Classify a received instance as frontal chest radiograph (model input) or not.

    Parameters
    ----------
    ds:
        The instance's dataset (pixels need not be decoded).
    assume_chest_without_body_part:
        Treat a CR/DX radiograph that names no body part anywhere as a chest: most such images
        on a chest node are chests, and the SR says the assumption was made.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if "PixelData" not in ds:
        return Classification(False, None, "no pixel data (not an image)")
    if sop_class not in RADIOGRAPH_SOP_CLASSES:
        return Classification(False, None, f"SOP class {sop_class} is not a radiograph")
    if modality not in RADIOGRAPH_MODALITIES:
        return Classification(False, None, f"modality {modality or 'missing'} is not CR/DX")
    if str(ds.get("Manufacturer", "")).lower() == "cxrnode":
        return Classification(False, None, "a result object of cxrnode itself")
    species = str(ds.get("PatientSpeciesDescription", "")).strip().upper()
    if species not in _HUMAN:
        return Classification(False, None, f"patient species {species!r} is not human")

    notes: list[str] = []
    body_part = str(ds.get("BodyPartExamined", "")).strip().upper()
    descriptions = " ".join(
        str(ds.get(k, "")) for k in ("StudyDescription", "SeriesDescription", "ProtocolName")
    )
    if body_part and body_part not in CHEST_BODY_PARTS:
        return Classification(False, None, f"body part {body_part} is not chest")
    if not body_part and not _CHEST_WORDS.search(descriptions):
        if not assume_chest_without_body_part:
            return Classification(False, None, "no body part given; not known to be chest")
        notes.append("no body part given; assumed chest")

    view = _view(ds, descriptions)
    if view == "lateral":
        return Classification(False, "lateral", "lateral view (model input is frontal PA/AP)")
    if view is None:
        notes.append("view position not given; assumed frontal")
        view = "frontal"
    return Classification(True, view, "; ".join(notes) or None)


def _view(ds: Dataset, descriptions: str) -> str | None:
    position = str(ds.get("ViewPosition", "")).strip().upper()
    if position in FRONTAL_VIEWS:
        return "frontal"
    if position in LATERAL_VIEWS:
        return "lateral"
    orientation = ds.get("PatientOrientation")
    if orientation and len(orientation) == 2:
        # The row direction of a frontal image runs left-right across the patient;
        # of a lateral one, front-back.
        row = str(orientation[0])[:1].upper()
        if row in {"L", "R"}:
            return "frontal"
        if row in {"A", "P"}:
            return "lateral"
    if _LATERAL_WORDS.search(descriptions):
        return "lateral"
    if _FRONTAL_WORDS.search(descriptions):
        return "frontal"
    return None
