"""From a dataset's annotations to training targets, for each label vocabulary.

The mapping from a dataset's own label field to a vocabulary is explicit and lives here, beside
the vocabularies, so that every dataset loader and every evaluation uses the same one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F

from models.labels import OPENI_MESH


class UncertainPolicy(StrEnum):
    """What a CheXpert/MIMIC-CXR "uncertain" (-1) mention becomes in training.

    ``ignore`` leaves it out of the loss (U-Ignore), ``zeros`` counts it as absent (U-Zeros),
    ``ones`` as present (U-Ones), after Irvin et al. 2019.
    """

    IGNORE = "ignore"
    ZEROS = "zeros"
    ONES = "ones"


def uncertain_targets(
    values: np.ndarray | Sequence[Sequence[float]], policy: UncertainPolicy | str
) -> tuple[np.ndarray, np.ndarray]:
    """Turn CheXpert-style label values into targets and a loss mask.

    Parameters
    ----------
    values : array-like
        ``(N, L)`` values: 1 positive, 0 negative, -1 uncertain, NaN not mentioned (read as
        negative, as the CheXpert labeller's authors do).
    policy : UncertainPolicy or str
        What an uncertain value becomes.

    Returns
    -------
    targets, mask : numpy.ndarray
        ``(N, L)`` float32 each; ``mask`` is 0 where a value is left out of the loss.

    Raises
    ------
    ValueError
        If the policy is unknown or a value is not 1, 0, -1 or NaN.
    """
    policy = UncertainPolicy(policy)
    array = np.asarray(values, dtype=np.float64)
    known = np.isnan(array) | np.isin(array, (-1.0, 0.0, 1.0))
    if not known.all():
        bad = sorted(set(array[~known].tolist()))[:5]
        raise ValueError(f"label values must be 1, 0, -1 or NaN; got {bad}")
    uncertain = array == -1.0
    targets = np.where(np.isnan(array), 0.0, array)
    mask = np.ones_like(targets)
    if policy is UncertainPolicy.IGNORE:
        targets[uncertain], mask[uncertain] = 0.0, 0.0
    else:
        targets[uncertain] = 1.0 if policy is UncertainPolicy.ONES else 0.0
    return targets.astype(np.float32), mask.astype(np.float32)


def masked_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy averaged over the entries the mask keeps.

    Parameters
    ----------
    logits, targets : torch.Tensor
        ``(N, L)`` model outputs and 0/1 targets.
    mask : torch.Tensor, optional
        ``(N, L)``; 0 leaves an entry out (an ignored uncertain label).
    pos_weight : torch.Tensor, optional
        ``(L,)`` weight of positives per label (seed 004's class balancing).

    Returns
    -------
    torch.Tensor
        The scalar loss; 0 when the mask keeps nothing.
    """
    losses = F.binary_cross_entropy_with_logits(
        logits, targets.to(logits.dtype), pos_weight=pos_weight, reduction="none"
    )
    if mask is None:
        return losses.mean()
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp_min(1.0)


# --- Open-i / IU X-ray MeSH field ------------------------------------------------------------

# Headings that name a place, not a finding: the finding is the first qualifier
# ("Lung/hypoinflation", "Spine/degenerative").
MESH_ANATOMICAL_HEADINGS = frozenset(
    name.lower()
    for name in (
        "Lung",
        "Thoracic Vertebrae",
        "Lumbar Vertebrae",
        "Cervical Vertebrae",
        "Spine",
        "Aorta",
        "Aorta, Thoracic",
        "Diaphragm",
        "Costophrenic Angle",
        "Cardiac Shadow",
        "Mediastinum",
        "Heart",
        "Heart Atria",
        "Heart Ventricles",
        "Pulmonary Artery",
        "Ribs",
        "Trachea",
        "Trachea, Carina",
        "Pleura",
        "Humerus",
        "Shoulder",
        "Abdomen",
        "Thorax",
        "Lymph Nodes",
        "Bone and Bones",
        "Blood Vessels",
        "Sulcus",
        "Adipose Tissue",
    )
)
# The same finding under two spellings.
MESH_SYNONYMS = {
    "pulmonary emphysema": "Emphysema",
    "aorta, thoracic/tortuous": "Aorta/tortuous",
}
# Not findings: no-finding markers, image quality, devices and other foreign material.
MESH_NOT_FINDINGS = frozenset(
    name.lower()
    for name in (
        "normal",
        "No Indexing",
        "Technical Quality of Image Unsatisfactory",
        "Catheters, Indwelling",
        "Surgical Instruments",
        "Implanted Medical Device",
        "Tube, Inserted",
        "Foreign Bodies",
        "Medical Device",
        "Stents",
        "Spinal Fusion",
        "Sutures",
        "Breast Implants",
        "Contrast Media",
        "Mastectomy",
        "Pneumonectomy",
    )
)
_OPENI_INDEX = {label.name.lower(): i for i, label in enumerate(OPENI_MESH)}
_OPENI_NAMES = {label.name.lower(): label.name for label in OPENI_MESH}


def mesh_finding_key(term: str) -> str | None:
    """Return the finding one Open-i MeSH term counts as, or ``None`` for a non-finding.

    Parameters
    ----------
    term : str
        One ``;``-separated entry of the MeSH field, e.g. ``"Opacity/lung/base/left"``.

    Returns
    -------
    str or None
        ``"Opacity"``, ``"Lung/hypoinflation"``...; ``None`` for "normal", devices and the like.
    """
    parts = [" ".join(part.split()) for part in term.split("/")]
    parts = [part for part in parts if part]
    if not parts or parts[0].lower() in MESH_NOT_FINDINGS:
        return None
    key = parts[0]
    if key.lower() in MESH_ANATOMICAL_HEADINGS and len(parts) > 1:
        key = f"{key}/{parts[1].lower()}"
    key = MESH_SYNONYMS.get(key.lower(), key)
    # Open-i spells some headings in more than one case ("Thoracic vertebrae").
    return _OPENI_NAMES.get(key.lower(), key)


def mesh_finding_keys(mesh_field: str | None) -> set[str]:
    """Return the set of findings (see :func:`mesh_finding_key`) of one report's MeSH field."""
    keys = (mesh_finding_key(term) for term in (mesh_field or "").split(";"))
    return {key for key in keys if key is not None}


def openi_mesh_targets(mesh_field: str | None) -> np.ndarray:
    """Return the :data:`models.labels.OPENI_MESH` target vector of one report's MeSH field.

    Parameters
    ----------
    mesh_field : str or None
        The ``MeSH`` column of ``indiana_reports.csv``, terms separated by ``;``.

    Returns
    -------
    numpy.ndarray
        ``(22,)`` float32, 1 where the report has the finding (a heading is matched
        case-insensitively, e.g. "Thoracic vertebrae/degenerative" counts).
    """
    targets = np.zeros(len(OPENI_MESH), dtype=np.float32)
    for key in mesh_finding_keys(mesh_field):
        index = _OPENI_INDEX.get(key.lower())
        if index is not None:
            targets[index] = 1.0
    return targets


def normal_abnormal_target(mesh_field: str | None) -> float | None:
    """Return the IU X-ray normal (0) / abnormal (1) target of a MeSH or Problems field.

    Returns
    -------
    float or None
        0.0 for "normal", ``None`` for an empty or "No Indexing" field (no label), else 1.0.
    """
    terms = [" ".join(term.split()).lower() for term in (mesh_field or "").split(";")]
    terms = [term for term in terms if term]
    if not terms or terms == ["no indexing"]:
        return None
    return 0.0 if terms == ["normal"] else 1.0


def rank_mesh_findings(mesh_fields: Iterable[str | None]) -> list[tuple[str, int]]:
    """Count in how many reports each finding occurs, most frequent first.

    This is how :data:`models.labels.OPENI_MESH` was chosen (its 22 first entries).

    Parameters
    ----------
    mesh_fields : iterable of str or None
        One MeSH field per report.

    Returns
    -------
    list of (str, int)
        Finding and report count, by count descending, ties by name.
    """
    counts: dict[str, int] = {}
    spellings: dict[str, str] = {}
    for field in mesh_fields:
        for key in mesh_finding_keys(field):
            folded = key.lower()
            counts[folded] = counts.get(folded, 0) + 1
            spellings[folded] = min(spellings.get(folded, key), key)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(spellings[folded], count) for folded, count in ranked]
