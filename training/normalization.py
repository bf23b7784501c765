"""How a run normalises its image inputs: the mean and std its package records, and where they
come from (``[model] normalization``, one of :data:`models.preprocess.NORMALIZATIONS`).

- ``fixed``: ``[model] mean`` and ``std``, else the preset's values.
- ``imagenet``: the statistics the image encoder's ImageNet weights were trained with
  (ImageNet's for torchvision, 127/128 for EfficientNet-Lite; their channel mean for a
  one-channel input).
- ``train_stats``: the per-channel mean and std of the training split's model inputs before
  normalisation (cropped, resized, replicated display images, as :func:`models.preprocess.
  to_model_input` makes them), computed once before training. Streaming: a running sum and
  sum of squares per channel, one image in memory at a time, over at most
  ``[model] normalization_images`` training images drawn by the seed (1,000 by default; seed
  004 fits its generator's statistics on a sample of the training set too). Used for
  training, validation, test and, through the package, serving.
- ``batch``: seed 004's batch-wise normalisation: each training batch is standardised by its
  own per-channel mean and std (:func:`standardise_batch`, applied by the trainer), validation,
  test and serving use the training statistics, as ``train_stats``.

Without ``normalization`` a run does what it always did: ``fixed`` where ``[model]`` gives a
mean or std, else ``imagenet`` for an encoder that asks for ImageNet weights, else ``fixed``
(the preset's values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from models.encoders.image import input_statistics
from models.preprocess import NORMALIZATIONS, PreprocessSpec, image_file_to_display, to_model_input
from training.datasets import Sample
from training.errors import TrainingError

DEFAULT_SAMPLE_IMAGES = 1000
# Methods whose statistics are those of the training split.
FROM_TRAINING = ("train_stats", "batch")


@dataclass(frozen=True)
class InputStatistics:
    """Per-channel statistics of model inputs before normalisation.

    Attributes
    ----------
    mean, std : tuple of float
        One value per input channel (population standard deviation).
    images : int
        How many images they were computed over.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: int


def choose_normalization(
    spec: PreprocessSpec, architecture: dict[str, Any], model: dict[str, Any]
) -> tuple[str, PreprocessSpec]:
    """The normalisation method a ``[model]`` table asks for, and the spec with its mean and std
    (for ``train_stats`` and ``batch`` the spec's own until :func:`training_statistics` is fitted).

    Raises
    ------
    TrainingError
        If the method is unknown, or ``[model]`` gives a mean or std with a method that does not
        use them.
    """
    explicit = "mean" in model or "std" in model
    imagenet = architecture.get("image_weights") == "imagenet"
    method = str(
        model.get("normalization") or ("fixed" if explicit or not imagenet else "imagenet")
    )
    if method not in NORMALIZATIONS:
        raise TrainingError(
            f"[model] normalization must be one of {NORMALIZATIONS}, not {method!r}"
        )
    if explicit and method != "fixed":
        raise TrainingError(f"[model] mean and std are for normalization 'fixed', not {method!r}")
    if method == "fixed" and explicit:
        return method, replace(
            spec, mean=tuple(model.get("mean", spec.mean)), std=tuple(model.get("std", spec.std))
        )
    if method == "imagenet":
        mean, std = input_statistics(str(architecture.get("image_encoder", "resnet18")))
        if spec.channels == 1:  # the gray image is each colour channel at once
            mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
        return method, replace(spec, mean=mean, std=std)
    return method, spec


def training_statistics(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    limit: int = DEFAULT_SAMPLE_IMAGES,
    seed: int = 0,
) -> InputStatistics:
    """Per-channel mean and std of the samples' model inputs before normalisation.

    Parameters
    ----------
    samples : sequence of Sample
        The training split; each needs an image.
    spec : PreprocessSpec
        Crop, resize, size and channels of the input (its mean and std are not used).
    limit : int
        At most this many images, drawn without replacement by ``seed`` (all when fewer).
    seed : int

    Returns
    -------
    InputStatistics

    Raises
    ------
    TrainingError
        If there are no images, ``limit`` is below 1, or the images have no contrast at all.
    """
    if limit < 1:
        raise TrainingError(f"[model] normalization_images must be >= 1, not {limit}")
    images = [s.image for s in samples if s.image is not None]
    if not images:
        raise TrainingError("training statistics need training images")
    if len(images) > limit:
        chosen = np.random.default_rng(seed).choice(len(images), limit, replace=False)
        images = [images[i] for i in sorted(chosen)]
    raw = replace(spec, mean=(0.0,) * spec.channels, std=(1.0,) * spec.channels)
    total = np.zeros(spec.channels, dtype=np.float64)
    squares = np.zeros(spec.channels, dtype=np.float64)
    pixels = 0
    for path in images:
        values = to_model_input(image_file_to_display(path), raw).double().flatten(1)
        total += values.sum(dim=1).numpy()
        squares += values.square().sum(dim=1).numpy()
        pixels += values.shape[1]
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    if std.min() <= 0:
        raise TrainingError("the training images have no contrast: their std is 0")
    return InputStatistics(tuple(mean.tolist()), tuple(std.tolist()), len(images))


def standardise_batch(images: torch.Tensor) -> torch.Tensor:
    """Standardise a ``(N, C, H, W)`` batch by its own per-channel mean and std (seed 004)."""
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return (images - mean) / std.clamp_min(1e-6)
