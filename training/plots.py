"""The figures of a training run, as seeds 000, 002 and 004 draw them: the class distribution of
each split, the reports' word counts and most frequent terms (data with text only), the
confusion matrix of each label at its chosen threshold, the ROC curves, a reliability diagram,
and Grad-CAM on the test images each label scores highest.

Every figure is a PNG in the run directory, drawn by matplotlib's Agg renderer (no display
needed). Grad-CAM maps come from the node's own :class:`models.predictor.Predictor` and are
blended as the node's captures blend them (:func:`node.results.heatmap.blend_heatmap`), so
what the run shows is what a radiologist would be sent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from models.encoders.text import split_words
from models.preprocess import image_file_to_display
from models.text import DEID_TOKEN
from node.results.heatmap import blend_heatmap
from training.datasets import Sample
from training.metrics import Evaluation, calibration, roc_auc, roc_curve

if TYPE_CHECKING:
    from models.predictor import Predictor

TOP_TERMS = 20
GRADCAM_IMAGES = 4
# Grad-CAM tiles are drawn at most this many pixels a side: a figure, not a diagnostic view.
_TILE = 320
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def _figure(rows: int = 1, columns: int = 1, *, size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes: a bare ``Figure``, rendered by Agg when saved as PNG, not one of
    pyplot's, so there is no global figure state to close and no backend to select."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    return figure, figure.subplots(rows, columns)


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _known(
    targets: np.ndarray, mask: np.ndarray, probabilities: np.ndarray, names: Sequence[str]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Each label's name, targets and scores where the mask keeps them."""
    for j, name in enumerate(names):
        kept = mask[:, j] > 0
        yield name, targets[kept, j], probabilities[kept, j]


def _grid(count: int, columns: int = 4) -> tuple[int, int]:
    return math.ceil(count / min(count, columns)), min(count, columns)


def plot_class_distribution(
    parts: dict[str, list[Sample]], names: Sequence[str], path: Path
) -> Path:
    """Positive and negative samples of each label in each split (masked ones left out)."""
    width = max(3.0, 0.5 * len(names) + 1.5) * len(parts)
    figure, axes = _figure(1, len(parts), size=(width, 3.6))
    x = np.arange(len(names))
    for ax, (split, samples) in zip(np.atleast_1d(axes), parts.items(), strict=True):
        targets = np.stack([s.targets for s in samples]) if samples else np.zeros((0, len(names)))
        mask = np.stack([s.mask for s in samples]) if samples else np.zeros((0, len(names)))
        positives = ((targets == 1) & (mask > 0)).sum(axis=0)
        negatives = ((targets == 0) & (mask > 0)).sum(axis=0)
        ax.bar(x - 0.2, positives, 0.4, label="positive", color="tab:red")
        ax.bar(x + 0.2, negatives, 0.4, label="negative", color="tab:gray")
        ax.set_xticks(x, names, rotation=60 if len(names) > 3 else 0, ha="right", fontsize=7)
        ax.set(title=f"{split} ({len(samples)} samples)", ylabel="samples")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return _save(figure, path)


def plot_word_counts(texts: dict[str, list[str]], path: Path) -> Path:
    """Histogram of the words per report of each split."""
    figure, ax = _figure(size=(6, 4))
    counts = {split: [len(split_words(t)) for t in rows] for split, rows in texts.items()}
    top = max((max(c) for c in counts.values() if c), default=1)
    bins = np.linspace(0, top + 1, min(40, top + 2))
    for split, values in counts.items():
        if values:
            label = f"{split} (median {int(np.median(values))})"
            ax.hist(values, bins, alpha=0.5, label=label, color=SPLIT_COLOURS.get(split))
    ax.set(xlabel="words per report", ylabel="reports", title="Report length")
    ax.legend(fontsize=7)
    return _save(figure, path)


def plot_top_terms(texts: Sequence[str], path: Path, top: int = TOP_TERMS) -> Path:
    """The ``top`` most frequent words of the texts, English stop words and the
    de-identification token (:data:`models.text.DEID_TOKEN`) left out."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    left_out = ENGLISH_STOP_WORDS | {DEID_TOKEN}
    counts = Counter(word for text in texts for word in split_words(text) if word not in left_out)
    words, frequencies = zip(*counts.most_common(top), strict=True) if counts else ((), ())
    figure, ax = _figure(size=(6, 0.22 * max(len(words), 4) + 1))
    ax.barh(np.arange(len(words)), frequencies, color="tab:blue")
    ax.set_yticks(np.arange(len(words)), words, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="occurrences", title=f"Top {len(words)} terms (training reports)")
    return _save(figure, path)


def plot_confusion_matrices(evaluation: Evaluation, path: Path) -> Path:
    """Each label's 2x2 confusion matrix at its threshold."""
    rows = evaluation.rows()
    grid = _grid(len(rows))
    figure, axes = _figure(*grid, size=(2.6 * grid[1], 2.5 * grid[0]))
    axes = np.atleast_1d(axes).ravel()
    for ax, row in zip(axes, rows, strict=False):
        matrix = np.array([[row["tp"], row["fn"]], [row["fp"], row["tn"]]])
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (i, j), value in np.ndenumerate(matrix):
            colour = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=colour)
        ax.set_xticks([0, 1], ["pred +", "pred −"], fontsize=7)
        ax.set_yticks([0, 1], ["true +", "true −"], fontsize=7)
        ax.set_title(f"{row['label']} ≥ {row['threshold']:.3f}", fontsize=8)
    for ax in axes[len(rows) :]:
        ax.axis("off")
    return _save(figure, path)


def save_roc_curves(
    targets: np.ndarray,
    mask: np.ndarray,
    probabilities: np.ndarray,
    names: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """Plot every label's ROC curve (with its AUROC) into one PNG."""
    figure, axes = _figure(size=(6, 6))
    for name, y, s in _known(targets, mask, probabilities, names):
        if (y == 1).sum() == 0 or (y == 0).sum() == 0:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        axes.plot(fpr, tpr, linewidth=1.2, label=f"{name} ({roc_auc(y, s):.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="lower right", fontsize=7)
    return _save(figure, path)


def plot_reliability(
    targets: np.ndarray,
    mask: np.ndarray,
    probabilities: np.ndarray,
    names: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """Reliability diagram: observed rate against mean probability per bin, with each label's
    ECE (:func:`training.metrics.calibration`'s ten equal-width bins)."""
    figure, ax = _figure(size=(6, 6))
    for name, y, s in _known(targets, mask, probabilities, names):
        if not len(y):
            continue
        result = calibration(y, s)
        predicted, observed = [b[0] for b in result.bins], [b[1] for b in result.bins]
        ax.plot(
            predicted, observed, marker="o", markersize=3, label=f"{name} (ECE {result.ece:.3f})"
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    return _save(figure, path)


def plot_grad_cams(
    predictor: Predictor,
    samples: Sequence[Sample],
    texts: Sequence[str | None] | None,
    probabilities: np.ndarray,
    directory: Path,
    top: int = GRADCAM_IMAGES,
) -> dict[str, Path]:
    """Grad-CAM of each label on the ``top`` test images it scores highest, one PNG per label.

    Parameters
    ----------
    predictor : Predictor
        Over the run's model (its package config's preprocessing and text cleaning).
    samples : sequence of Sample
        The test samples, in the order of ``probabilities``.
    texts : sequence of (str or None), or None
        The report each image's model reads (cleaned by the predictor), or None.
    probabilities : numpy.ndarray
        ``(N, L)`` test probabilities.
    directory : pathlib.Path
        Where ``gradcam_<label>.png`` go.

    Returns
    -------
    dict
        Label name to PNG.
    """
    written = {}
    for j, label in enumerate(predictor.package.config.labels):
        chosen = np.argsort(-probabilities[:, j], kind="stable")[:top]
        displays = [image_file_to_display(samples[i].image) for i in chosen]  # type: ignore[arg-type]
        maps = predictor.explain_many(
            displays, [[j]] * len(chosen), None if texts is None else [texts[i] for i in chosen]
        )
        figure, axes = _figure(1, len(chosen), size=(2.6 * len(chosen), 2.9))
        for ax, i, display, cam in zip(np.atleast_1d(axes), chosen, displays, maps, strict=True):
            tile = Image.fromarray(blend_heatmap(display, cam[0]))
            tile.thumbnail((_TILE, _TILE))
            ax.imshow(np.asarray(tile))
            truth = {1.0: "positive", 0.0: "negative"}.get(float(samples[i].targets[j]), "?")
            if samples[i].mask[j] <= 0:
                truth = "unknown"
            # A map of zeros: Grad-CAM's ReLU found no region that raises the score.
            empty = "\nno region raises it" if float(cam[0].max()) == 0.0 else ""
            ax.set_title(f"p={probabilities[i, j]:.2f}, {truth}{empty}", fontsize=8)
            ax.axis("off")
        figure.suptitle(f"Grad-CAM, {label.name}: top {len(chosen)} test images", fontsize=9)
        written[label.name] = _save(figure, directory / f"gradcam_{_file_part(label.name)}.png")
    return written


def _file_part(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower() or "label"
