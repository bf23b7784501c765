"""The RSNA Pneumonia case the result tests draw on: a real adult chest X-ray with two labelled
opacity boxes (../shared/data/rsna-pneumonia-sample)."""

from __future__ import annotations

import csv
from pathlib import Path

RSNA_CASE = "00436515-870c-4b36-a041-de91049b9ab4"  # two labelled opacity boxes


def rsna_case_path(shared_data: Path) -> Path:
    """The case's DICOM file."""
    return shared_data / "rsna-pneumonia-sample" / "stage_1_train_images" / f"{RSNA_CASE}.dcm"


def rsna_case_boxes(shared_data: Path) -> list[tuple[float, float, float, float]]:
    """The case's opacity boxes, ``(x, y, width, height)`` in pixels, as RSNA labelled them."""
    labels = shared_data / "rsna-pneumonia-sample" / "example_train_labels.csv"
    with labels.open(newline="") as handle:
        return [
            tuple(float(row[k]) for k in ("x", "y", "width", "height"))  # type: ignore[misc]
            for row in csv.DictReader(handle)
            if row["patientId"] == RSNA_CASE and row["Target"] == "1"
        ]
