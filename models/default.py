"""The out-of-the-box package: an untrained ResNet-18 so the node runs end to end on day one.

It predicts nothing. Its outputs are meaningless and every output says so; it exists so that
DICOM in, inference, Grad-CAM, SR and secondary captures out can be exercised without any
downloaded weights. A trained default replaces it once one exists.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from models.errors import ModelPackageError
from models.labels import NIH_CHESTXRAY14
from models.network import build_model
from models.package import CONFIG_FILE, LabelConfig, ModelConfig, save_package
from models.preprocess import PreprocessSpec

REFERENCE_NAME = "cxrnode-untrained-reference"
REFERENCE_VERSION = "0.1.0"
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
A ResNet-18 image classifier with the 14 NIH ChestX-ray14 labels, built with random weights
(`torch.manual_seed(0)`) and **never trained on any data**. Its output biases are set to spread
the label probabilities around the 0.5 threshold so that both "absent" and "present" results
occur; which labels come out "present" is an artefact of that setting, not of the image.

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
            "text_dim": 0,
            "hidden_dim": 256,
            "dropout": 0.2,
        },
        preprocessing=PreprocessSpec(image_size=224, channels=3),
        labels=tuple(LabelConfig.from_label(label, threshold=0.5) for label in NIH_CHESTXRAY14),
        trained=False,
        disclaimer=REFERENCE_DISCLAIMER,
        training_data="none (untrained, random initialisation)",
        created=REFERENCE_CREATED,
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


def ensure_default_package(data_dir: str | Path) -> Path:
    """Return the reference package under ``<data_dir>/models/``, building it once if absent.

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
    """
    parent = Path(data_dir) / "models"
    target = parent / REFERENCE_NAME
    if (target / CONFIG_FILE).is_file():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{REFERENCE_NAME}-", dir=parent))
    try:
        build_reference_package(scratch / REFERENCE_NAME)
        try:
            os.rename(scratch / REFERENCE_NAME, target)
        except OSError as exc:
            # Another process may have finished first; then its package is as good as ours.
            if not (target / CONFIG_FILE).is_file():
                raise ModelPackageError(
                    f"{target} exists but is not a complete model package; remove it"
                ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
