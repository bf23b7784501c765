"""Samples to batches: images through the one preprocessing of :mod:`models.preprocess`, report
text through the package's :class:`models.text.TextCleaning`.

Which text a model reads is a named choice (``text_source``): the report (findings and
impression, as the cleaning's sections say), the order's indication only (the ablation: what
the model could know before the radiologist wrote anything), or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from models.preprocess import PreprocessSpec, image_file_to_display, to_model_input
from models.text import TextCleaning
from training.datasets import Sample
from training.errors import TrainingError

TEXT_SOURCES = ("report", "indication", "none")


def sample_text(sample: Sample, source: str, cleaning: TextCleaning) -> str | None:
    """The cleaned text a model reads of a sample, or ``None``."""
    if source == "report":
        return cleaning(sample.report)
    if source == "indication":
        # An indication has no section headings; keep it whole, with the same other steps.
        return TextCleaning((), cleaning.mask_words, cleaning.lowercase)(sample.indication)
    if source == "none":
        return None
    raise TrainingError(f"text_source must be one of {TEXT_SOURCES}, not {source!r}")


@dataclass
class Batch:
    """A collated batch: ``images`` is ``None`` for text-only models."""

    images: torch.Tensor | None
    texts: list[str | None]
    targets: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.texts)


class SampleDataset(Dataset):
    """Model inputs of samples.

    Parameters
    ----------
    samples : sequence of Sample
    spec : PreprocessSpec or None
        Image input; ``None`` for a text-only model (images are not read).
    cleaning : TextCleaning
        The model's report cleaning.
    text_source : str
        One of :data:`TEXT_SOURCES`.
    augment : bool
        Random horizontal flips (seed 004) and small affine and contrast changes, drawn from
        the generator the trainer seeds (see :meth:`_augment`).
    cache_images : bool
        Keep decoded display images in memory (small datasets are read once, not per epoch).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        spec: PreprocessSpec | None,
        cleaning: TextCleaning,
        text_source: str = "report",
        augment: bool = False,
        cache_images: bool = True,
    ) -> None:
        if text_source not in TEXT_SOURCES:
            raise TrainingError(f"text_source must be one of {TEXT_SOURCES}")
        if spec is not None and any(s.image is None for s in samples):
            raise TrainingError("an image model needs every sample to have an image")
        self.samples = list(samples)
        self.spec = spec
        self.texts = [sample_text(s, text_source, cleaning) for s in self.samples]
        self.augment = augment
        self.generator = torch.Generator().manual_seed(0)
        self._cache: dict[int, torch.Tensor] = {}
        self.cache_images = cache_images

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> torch.Tensor:
        """The model input of one sample's image."""
        cached = self._cache.get(index)
        if cached is None:
            assert self.spec is not None and self.samples[index].image is not None
            cached = to_model_input(image_file_to_display(self.samples[index].image), self.spec)
            if self.cache_images:
                self._cache[index] = cached
        return cached

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        """A horizontal flip half the time (seed 004), then a small random shift, zoom and
        rotation and a contrast/brightness change, all drawn from the trainer-seeded generator.

        Applied to the normalised input: the affine fills with the image's own mean so the
        border looks like tissue, not like a black frame the model could learn from.
        """

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand((), generator=self.generator))

        if uniform(0, 1) < 0.5:
            image = image.flip(-1)
        size = image.shape[-1]
        image = TF.affine(
            image,
            angle=uniform(-7, 7),
            translate=[round(uniform(-0.06, 0.06) * size), round(uniform(-0.06, 0.06) * size)],
            scale=uniform(0.92, 1.08),
            shear=[0.0, 0.0],
            fill=float(image.mean()),
        )
        mean = image.mean()
        return (image - mean) * uniform(0.9, 1.1) + mean + uniform(-0.1, 0.1)

    def __getitem__(
        self, index: int
    ) -> tuple[torch.Tensor | None, str | None, np.ndarray, np.ndarray]:
        sample = self.samples[index]
        image = None
        if self.spec is not None:
            image = self.image(index)
            if self.augment:
                image = self._augment(image)
        return image, self.texts[index], sample.targets, sample.mask


def collate(
    items: Sequence[tuple[torch.Tensor | None, str | None, np.ndarray, np.ndarray]],
) -> Batch:
    """Stack a list of :meth:`SampleDataset.__getitem__` results."""
    images = [item[0] for item in items]
    return Batch(
        images=None if images[0] is None else torch.stack(images),  # type: ignore[arg-type]
        texts=[item[1] for item in items],
        targets=torch.from_numpy(np.stack([item[2] for item in items])),
        mask=torch.from_numpy(np.stack([item[3] for item in items])),
    )
