"""The seeds' losses over per-label logits, each honouring a mask (ignored uncertain labels).

=====================  =======================================================================
name                   loss
=====================  =======================================================================
``bce``                plain binary cross-entropy
``weighted_ce``        class-weighted cross-entropy (seed 000): each label as a two-class
                       problem, classes weighted ``n / (2 n_class)``
``weighted_bce``       seed 004: ``-[w_pos y log p + w_neg (1-y) log(1-p)]``, ``w_pos =
                       freq_neg``, ``w_neg = freq_pos``
``focal``              focal loss (Lin et al. 2017), ``gamma`` and ``alpha``
``bce_focal``          seed 003: BCE plus focal
=====================  =======================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.datasets import Sample
from training.errors import TrainingError
from training.splits import class_weights, seed004_weights

LOSSES = ("bce", "weighted_ce", "weighted_bce", "focal", "bce_focal")


def _reduce(losses: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return losses.mean()
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp_min(1.0)


class MaskedBCE(nn.Module):
    """Binary cross-entropy averaged over the kept entries."""

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ):  # noqa: D102
        losses = F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), reduction="none"
        )
        return _reduce(losses, mask)


class ClassWeightedCrossEntropy(nn.Module):
    """Seed 000's class-weighted cross-entropy, label by label.

    A label's logit ``z`` is the two-class logit pair ``(0, z)``; the loss of an entry is its
    class weight times the cross-entropy, and the mean divides by the summed weights, as
    ``torch.nn.CrossEntropyLoss(weight=...)`` does.

    Parameters
    ----------
    weights : torch.Tensor
        ``(n_labels, 2)``: weight of the negative and the positive class of each label.
    """

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights.float())

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ):  # noqa: D102
        targets = targets.to(logits.dtype)
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        weight = targets * self.weights[:, 1] + (1 - targets) * self.weights[:, 0]
        if mask is not None:
            weight = weight * mask.to(weight.dtype)
        return (losses * weight).sum() / weight.sum().clamp_min(1e-12)


class Seed004WeightedBCE(nn.Module):
    """Seed 004's weighted binary cross-entropy, written as the seed writes it.

    ``L = -mean[w_pos y log(p + eps) + w_neg (1 - y) log(1 - p + eps)]`` with ``p`` the
    sigmoid of the logit and ``eps = 1e-7``.
    """

    def __init__(self, w_pos: torch.Tensor, w_neg: torch.Tensor, eps: float = 1e-7) -> None:
        super().__init__()
        self.register_buffer("w_pos", w_pos.float())
        self.register_buffer("w_neg", w_neg.float())
        self.eps = eps

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ):  # noqa: D102
        p = torch.sigmoid(logits.float())
        y = targets.float()
        losses = -(
            self.w_pos * y * torch.log(p + self.eps)
            + self.w_neg * (1 - y) * torch.log(1 - p + self.eps)
        )
        return _reduce(losses, mask)


class FocalLoss(nn.Module):
    """Focal loss: ``alpha_t (1 - p_t)^gamma`` times the cross-entropy of each entry."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25) -> None:
        super().__init__()
        if gamma < 0 or (alpha is not None and not 0 < alpha < 1):
            raise TrainingError(f"focal loss needs gamma >= 0 and 0 < alpha < 1: {gamma}, {alpha}")
        self.gamma, self.alpha = gamma, alpha

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ):  # noqa: D102
        targets = targets.to(logits.dtype)
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = targets * p + (1 - targets) * (1 - p)
        losses = (1 - p_t).pow(self.gamma) * ce
        if self.alpha is not None:
            losses = (targets * self.alpha + (1 - targets) * (1 - self.alpha)) * losses
        return _reduce(losses, mask)


class BceFocal(nn.Module):
    """Seed 003's BCE + focal loss, each with its weight."""

    def __init__(
        self,
        bce_weight: float = 1.0,
        focal_weight: float = 1.0,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
    ) -> None:
        super().__init__()
        self.bce, self.focal = MaskedBCE(), FocalLoss(gamma, alpha)
        self.bce_weight, self.focal_weight = bce_weight, focal_weight

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ):  # noqa: D102
        return self.bce_weight * self.bce(logits, targets, mask) + self.focal_weight * self.focal(
            logits, targets, mask
        )


def build_loss(name: str, train_samples: Sequence[Sample], **options: float) -> nn.Module:
    """Build a loss by name, its class weights from the training samples.

    Parameters
    ----------
    name : str
        One of :data:`LOSSES`.
    train_samples : sequence of Sample
        The training part (weights never look at validation or test data).
    **options
        ``gamma``, ``alpha`` (focal), ``bce_weight``, ``focal_weight`` (bce_focal).
    """
    if name == "bce":
        return MaskedBCE()
    if name == "weighted_ce":
        return ClassWeightedCrossEntropy(class_weights(train_samples))
    if name == "weighted_bce":
        return Seed004WeightedBCE(*seed004_weights(train_samples))
    if name == "focal":
        return FocalLoss(options.get("gamma", 2.0), options.get("alpha", 0.25))
    if name == "bce_focal":
        return BceFocal(
            options.get("bce_weight", 1.0),
            options.get("focal_weight", 1.0),
            options.get("gamma", 2.0),
            options.get("alpha", 0.25),
        )
    raise TrainingError(f"unknown loss {name!r}; known: {list(LOSSES)}")
