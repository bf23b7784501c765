"""The contrastive alignment of images and reports in the joint space (seed 003), beside the
classification loss.

A batch's images and reports, projected into the model's joint space (``models.joint``), are
trained with the symmetric InfoNCE loss of CLIP (Radford et al. 2021): the similarity matrix of
every image with every report of the batch, scaled by the model's learnable inverse
temperature, is read as logits in which each image's own report is the right answer among the
batch's reports (the others are its negatives), and each report's own image likewise; the two
cross-entropies are averaged. Rows without a report (none was given, or modality dropout hid
it) take no part. The term is added to the classification loss with ``[loss]
contrastive_weight``; the joint space and its temperature are the model's, so they are saved
in the package with the rest of the weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.joint import JointEmbeddings
from models.network import CxrClassifier
from training.errors import TrainingError


def clip_loss(joint: JointEmbeddings) -> torch.Tensor:
    """Symmetric InfoNCE of a batch's paired image and report embeddings.

    Parameters
    ----------
    joint : JointEmbeddings
        Unit-length embeddings; only the rows whose report is ``present`` are paired.

    Returns
    -------
    torch.Tensor
        Scalar: the mean of the image-to-report and report-to-image cross-entropies over the
        ``R`` rows with a report; 0 (still attached to the graph) when ``R < 2``, where there
        is no negative to contrast with.
    """
    rows = joint.present.nonzero().squeeze(1)
    if rows.numel() < 2:
        return joint.image.float().sum() * 0.0
    image, text = joint.image[rows].float(), joint.text[rows].float()
    logits = joint.logit_scale.float() * image @ text.T
    target = torch.arange(len(rows), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class ContrastiveAlignment(nn.Module):
    """``weight`` times :func:`clip_loss`, the term the trainer adds to the classification loss.

    Parameters
    ----------
    weight : float
        Weight of the contrastive term (> 0).
    """

    def __init__(self, weight: float) -> None:
        super().__init__()
        if not weight > 0:
            raise TrainingError(f"contrastive_weight must be > 0, not {weight}")
        self.weight = float(weight)

    def forward(self, joint: JointEmbeddings) -> torch.Tensor:  # noqa: D102
        return self.weight * clip_loss(joint)


def build_alignment(loss_table: dict[str, Any], model: nn.Module) -> ContrastiveAlignment | None:
    """The alignment a config's ``[loss]`` table asks for, checked against the model.

    Parameters
    ----------
    loss_table : dict
        ``[loss]``; ``contrastive_weight`` (default 0: none).
    model : nn.Module
        The model to train.

    Returns
    -------
    ContrastiveAlignment or None
        ``None`` when the weight is 0 and the model has no joint space.

    Raises
    ------
    TrainingError
        If the weight is negative, or given for a model without a joint space, or if the
        model has a joint space and no weight trains it (its retrieval embeddings would be a
        random projection).
    """
    weight = float(loss_table.get("contrastive_weight", 0.0))
    has_joint = isinstance(model, CxrClassifier) and model.joint is not None
    if weight < 0:
        raise TrainingError(f"[loss] contrastive_weight must be >= 0, not {weight}")
    if weight > 0 and not has_joint:
        raise TrainingError(
            "[loss] contrastive_weight needs a joint space: an image model with a text encoder "
            "and [model] architecture joint_dim > 0"
        )
    if has_joint and weight == 0:
        raise TrainingError(
            "[model] architecture joint_dim > 0 needs [loss] contrastive_weight > 0: an "
            "untrained joint space would give random retrieval embeddings"
        )
    return ContrastiveAlignment(weight) if weight > 0 else None
