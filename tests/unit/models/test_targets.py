"""Dataset annotations to targets: uncertain labels, Open-i MeSH terms, normal/abnormal."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from models.labels import OPENI_MESH
from models.targets import (
    UncertainPolicy,
    masked_bce_with_logits,
    mesh_finding_key,
    normal_abnormal_target,
    openi_mesh_targets,
    rank_mesh_findings,
    uncertain_targets,
)

NAN = float("nan")
VALUES = [[1.0, 0.0, -1.0, NAN]]


@pytest.mark.parametrize(
    ("policy", "targets", "mask"),
    [
        ("ignore", [1, 0, 0, 0], [1, 1, 0, 1]),
        ("zeros", [1, 0, 0, 0], [1, 1, 1, 1]),
        ("ones", [1, 0, 1, 0], [1, 1, 1, 1]),
    ],
)
def test_uncertain_labels_follow_the_policy(policy, targets, mask):
    got_targets, got_mask = uncertain_targets(VALUES, policy)
    np.testing.assert_array_equal(got_targets, [targets])
    np.testing.assert_array_equal(got_mask, [mask])
    assert got_targets.dtype == np.float32


def test_uncertain_policy_and_values_are_validated():
    assert UncertainPolicy("ones") is UncertainPolicy.ONES
    with pytest.raises(ValueError):
        uncertain_targets(VALUES, "half")
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        uncertain_targets([[2.0]], "zeros")


def test_ignored_labels_do_not_move_the_loss():
    logits = torch.tensor([[3.0, -2.0, 50.0]])
    targets, mask = (torch.from_numpy(a) for a in uncertain_targets([[1, 0, -1]], "ignore"))
    loss = masked_bce_with_logits(logits, targets, mask)
    expected = masked_bce_with_logits(logits[:, :2], targets[:, :2])
    torch.testing.assert_close(loss, expected)


def test_mesh_terms_map_to_findings():
    assert mesh_finding_key("Opacity/lung/base/left") == "Opacity"
    assert mesh_finding_key("Lung/hypoinflation/mild") == "Lung/hypoinflation"
    assert mesh_finding_key("Thoracic vertebrae/degenerative") == "Thoracic Vertebrae/degenerative"
    assert mesh_finding_key("Pulmonary Emphysema") == "Emphysema"
    assert mesh_finding_key("Catheters, Indwelling/right") is None
    assert mesh_finding_key("normal") is None


def test_a_report_maps_to_its_openi_label_vector():
    field = "Cardiomegaly/mild;Opacity/lung/base/left;Opacity/lung/apex;Osteophyte"
    targets = openi_mesh_targets(field)
    names = {OPENI_MESH[i].name for i in np.flatnonzero(targets)}
    assert names == {"Cardiomegaly", "Opacity"} and targets.shape == (22,)
    assert not openi_mesh_targets("normal").any() and not openi_mesh_targets(None).any()


def test_normal_abnormal_comes_from_the_mesh_field():
    assert normal_abnormal_target("normal") == 0.0
    assert normal_abnormal_target("Cardiomegaly/borderline") == 1.0
    assert normal_abnormal_target("No Indexing") is None


def test_openi_labels_are_the_22_most_frequent_findings_of_the_iu_reports(shared_data: Path):
    path = shared_data / "iu-xray-openi-reports" / "indiana_reports.csv"
    with path.open(newline="") as handle:
        fields = [row["MeSH"] for row in csv.DictReader(handle)]
    ranked = rank_mesh_findings(fields)
    assert [name for name, _ in ranked[:22]] == [label.name for label in OPENI_MESH]
    assert ranked[21][1] > ranked[22][1]  # the cut falls between two counts
