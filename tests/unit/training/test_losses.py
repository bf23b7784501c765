"""The seeds' losses against their definitions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses import (
    BceFocal,
    ClassWeightedCrossEntropy,
    FocalLoss,
    MaskedBCE,
    Seed004WeightedBCE,
)

LOGITS = torch.tensor([[2.0, -1.0], [-0.5, 0.3], [1.5, 0.0], [-2.0, 1.2]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])


def test_class_weighted_ce_is_torch_cross_entropy_with_class_weights() -> None:
    weights = torch.tensor([[0.7, 1.9], [1.2, 0.8]])
    ours = ClassWeightedCrossEntropy(weights)(LOGITS, TARGETS)
    # Each label as a two-class problem with logits (0, z), weighted by class.
    total, norm = 0.0, 0.0
    for j in range(2):
        pair = torch.stack([torch.zeros(4), LOGITS[:, j]], dim=1)
        losses = F.cross_entropy(pair, TARGETS[:, j].long(), weight=weights[j], reduction="sum")
        total += losses
        norm += weights[j][TARGETS[:, j].long()].sum()
    assert torch.allclose(ours, total / norm, atol=1e-6)


def test_seed004_weighted_bce_follows_its_formula() -> None:
    w_pos, w_neg = torch.tensor([0.8, 0.3]), torch.tensor([0.2, 0.7])
    p = torch.sigmoid(LOGITS)
    expected = -(
        w_pos * TARGETS * torch.log(p + 1e-7) + w_neg * (1 - TARGETS) * torch.log(1 - p + 1e-7)
    )
    assert torch.allclose(
        Seed004WeightedBCE(w_pos, w_neg)(LOGITS, TARGETS), expected.mean(), atol=1e-6
    )


def test_focal_without_focusing_is_bce_and_focusing_down_weights_easy_examples() -> None:
    bce = F.binary_cross_entropy_with_logits(LOGITS, TARGETS)
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=None)(LOGITS, TARGETS), bce, atol=1e-6)
    assert FocalLoss(gamma=2.0, alpha=None)(LOGITS, TARGETS) < bce
    combined = BceFocal(1.0, 1.0, 0.0, None)(LOGITS, TARGETS)
    assert torch.allclose(combined, 2 * bce, atol=1e-6)


def test_masked_entries_leave_the_loss() -> None:
    mask = torch.ones_like(TARGETS)
    mask[0, 0] = 0.0
    changed = TARGETS.clone()
    changed[0, 0] = 1.0 - changed[0, 0]
    assert torch.equal(MaskedBCE()(LOGITS, TARGETS, mask), MaskedBCE()(LOGITS, changed, mask))
