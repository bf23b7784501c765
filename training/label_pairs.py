"""Images and reports of *different* patients paired by label: the only image–report data the
staged public sources allow, to measure a joint image–text space.

No staged dataset has an image and a report of the same study (the IU X-ray reports come
without their images; the NIH images without reports). This reader gives each NIH image of the
staged DarkCovidNet subset (No Finding / Pneumonia) a distinct IU X-ray report drawn at random
(seeded) from the reports of its class: a "normal" report (MeSH "normal") for a No Finding
image, and for a Pneumonia image a report with an airspace finding (Open-i MeSH Opacity or
Airspace Disease, the headings under which IU X-ray indexes pneumonic opacities); an image of
any other class, or one left when its pool is used up, has no report. Each report (study) is
drawn once, though some share their wording (normal IU reports often repeat word for word, so
a batch can hold the same text for two images, as real reports would). The pairing is
**artificial**: a report describes its class, not its image, so what a joint space learns from
it is to place an image near reports of its class. Labels and patients are the image's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from models.labels import OPENI_MESH
from training.datasets import (
    IU_TERMS,
    NIH_TERMS,
    LabelledData,
    read_iu_xray,
    read_nih_labelled_folders,
)
from training.errors import DatasetError

# The Open-i MeSH findings that make an IU report an "airspace" report, the Pneumonia pool.
AIRSPACE_FINDINGS = ("Opacity", "Airspace Disease")
VOCABULARY = "abnormal-pneumonia"


def report_pools(reports_csv: str | Path) -> dict[str, list[str]]:
    """IU X-ray report texts by class: ``"normal"`` and ``"airspace"``, in file order.

    Parameters
    ----------
    reports_csv : str or pathlib.Path
        ``indiana_reports.csv``.
    """
    normal = read_iu_xray(reports_csv, vocabulary="normal-abnormal")
    findings = read_iu_xray(reports_csv, vocabulary="openi-mesh-22")
    names = [label.name for label in OPENI_MESH]
    columns = [names.index(name) for name in AIRSPACE_FINDINGS]
    return {
        "normal": [s.report for s in normal.samples if s.report and s.targets[0] == 0],
        "airspace": [s.report for s in findings.samples if s.report and s.targets[columns].any()],
    }


def _pool_of(targets: np.ndarray) -> str | None:
    """The report pool of an ``abnormal-pneumonia`` target vector (Abnormal, Pneumonia)."""
    if not targets.any():
        return "normal"
    return "airspace" if targets[1] else None


def read_nih_iu_paired_by_label(
    root: str | Path,
    reports_csv: str | Path,
    *,
    labels_csv: str = "labels.csv",
    vocabulary: str = VOCABULARY,
    seed: int = 0,
) -> LabelledData:
    """Read the NIH labelled-folder images, each with an IU X-ray report of its class.

    Parameters
    ----------
    root : str or pathlib.Path
        The NIH folder (``No_findings/``, ``Pneumonia/``, ``labels.csv``), as for
        :func:`training.datasets.read_nih_labelled_folders`.
    reports_csv : str or pathlib.Path
        IU X-ray's ``indiana_reports.csv``.
    labels_csv : str
        The NIH label file's name in ``root``.
    vocabulary : str
        Only ``"abnormal-pneumonia"``.
    seed : int
        Which reports are drawn for which image.

    Raises
    ------
    DatasetError
        If another vocabulary is asked for, or a file is missing.
    """
    if vocabulary != VOCABULARY:
        raise DatasetError(f"reports are paired by label for {VOCABULARY!r} only")
    images = read_nih_labelled_folders(root, labels_csv=labels_csv, vocabulary=vocabulary)
    rng = np.random.default_rng(seed)
    pools = {
        name: list(rng.permutation(texts)) for name, texts in report_pools(reports_csv).items()
    }
    samples = []
    for sample in images.samples:
        pool = pools.get(_pool_of(sample.targets) or "", [])
        samples.append(replace(sample, report=str(pool.pop()) if pool else None))
    return LabelledData(
        "NIH ChestX-ray14 images with IU X-ray reports paired by label (artificial)",
        vocabulary,
        samples,
        images.missing,
        source=f"{NIH_TERMS}; reports: {IU_TERMS}",
    )
