"""``cxrnode evaluate --explanations``: seed 003's agreement figures on hand-made maps with known
answers, and the command on three real RSNA images (two with opacity boxes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.default import bundled_default_package
from node.cli import main
from training.explanations import (
    box_mask,
    on_grid,
    peak_in_boxes,
    pearson,
    read_rsna_boxes,
    share_in_boxes,
    top_iou,
    top_pixels,
)

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "training" / "configs" / "rsna-check-abnormal-pneumonia.toml"
BOXED = ("00436515-870c-4b36-a041-de91049b9ab4", "00704310-78a8-4b38-8475-49f4573b2dbb")
UNBOXED = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"


def test_agreement_of_hand_made_maps():
    ramp = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert pearson(ramp, 2 * ramp + 1) == pytest.approx(1.0)
    assert pearson(ramp, -ramp) == pytest.approx(-1.0)
    assert np.isnan(pearson(ramp, np.ones_like(ramp)))
    # The top 5% of a ramp are its last five pixels; of the reversed ramp, its first five.
    assert top_pixels(ramp, 0.05).sum() == 5 and top_pixels(ramp, 0.05).flat[95:].all()
    assert top_iou(ramp, ramp, 0.05) == 1.0 and top_iou(ramp, ramp[::-1], 0.05) == 0.0
    # Top 20% of a ramp (pixels 80..99) against a ramp shifted by ten (pixels 70..89 on top).
    shifted = np.roll(ramp.ravel(), 10).reshape(10, 10)
    assert top_iou(ramp, shifted, 0.20) == pytest.approx(10 / 30)
    with pytest.raises(ValueError, match="fraction"):
        top_pixels(ramp, 0.0)
    # On a 2 x 2 grid each cell is the mean of its 5 x 5 block.
    blocks = on_grid(ramp, 2)
    assert blocks.shape == (2, 2)
    assert blocks[0, 0] == pytest.approx(ramp[:5, :5].mean())
    assert blocks[1, 1] == pytest.approx(ramp[5:, 5:].mean())


def test_localisation_of_hand_made_maps():
    boxes = box_mask((10, 10), [(5.0, 8.0, 5.0, 2.0)])  # x 5..9, y 8..9: the ramp's top ten
    assert boxes.sum() == 10
    ramp = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert share_in_boxes(ramp, boxes, 0.05) == 1.0
    assert share_in_boxes(ramp, boxes, 0.20) == pytest.approx(10 / 20)
    assert peak_in_boxes(ramp, boxes) and not peak_in_boxes(ramp[::-1], boxes)


@pytest.fixture(scope="module")
def three_rsna_images(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RSNA folder with three of its images (links, nothing copied)."""
    source = shared_data / "rsna-pneumonia-sample"
    folder = tmp_path_factory.mktemp("rsna")
    (folder / "stage_1_train_images").mkdir()
    for name in ("example_train_labels.csv", "example_detailed_class_info.csv"):
        (folder / name).symlink_to(source / name)
    for patient in (*BOXED, UNBOXED):
        image = f"stage_1_train_images/{patient}.dcm"
        (folder / image).symlink_to(source / image)
    return folder


def test_evaluate_explanations_scores_agreement_and_the_boxes(three_rsna_images, tmp_path, capsys):
    output = tmp_path / "run"
    code = main(
        [
            "evaluate",
            "--config", str(CONFIG),
            "--package", str(bundled_default_package()),
            "--split", "all",
            "--set", f'data.root="{three_rsna_images}"',
            "--set", f'run.output="{output}"',
            "--explanations",
            "--ig-steps", "2",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((output / "evaluate" / "results.json").read_text())
    explanations = results["explanations"]
    assert (explanations["images"], explanations["labels"]) == (3, ["Abnormal", "Pneumonia"])
    agreement = explanations["agreement"]
    assert -1.0 <= agreement["pearson"] <= 1.0
    assert 0.0 <= agreement["iou_top_20"] <= 1.0 and 0.0 <= agreement["iou_top_5"] <= 1.0
    assert set(agreement) == {f"{k}{s}" for k in ("pearson", "iou_top_5", "iou_top_20")
                              for s in ("", "_grid")}  # fmt: skip
    assert explanations["grid_cells"] == 7  # 224 px / a stride of 32
    assert -1.0 <= agreement["pearson_grid"] <= 1.0
    located = explanations["localisation"]
    assert (located["label"], located["boxed_images"]) == ("Pneumonia", 2)
    boxes = read_rsna_boxes(three_rsna_images)
    expected_area = np.mean([box_mask((1024, 1024), boxes[p]).mean() for p in BOXED])
    assert located["box_share_of_image"] == pytest.approx(expected_area, abs=1e-4)
    for method in ("gradcam", "integrated_gradients"):
        assert set(located[method]) == {"top_5_in_box", "top_20_in_box", "pointing_game"}
        assert all(0.0 <= value <= 1.0 for value in located[method].values())
    report = Path(explanations["report"]).read_text()
    assert "| Pearson ρ |" in report and "| 0.9163 |" in report and "pointing game" in report
    assert json.loads(capsys.readouterr().out)["explanations"]["images"] == 3


def test_evaluate_refuses_a_step_count_below_one(capsys):
    code = main(
        ["evaluate", "--config", str(CONFIG), "--package", str(bundled_default_package()),
         "--explanations", "--ig-steps", "0"]
    )  # fmt: skip
    assert code == 2
    assert "--ig-steps must be at least 1" in capsys.readouterr().err
