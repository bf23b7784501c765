"""Semi-supervised training, as seed 001 trains: labelled and unlabelled studies, with an
exponential moving average (EMA) of the weights.

Labels are scarce and images are not: a PACS holds far more studies than anyone has labelled.
A ``[semisupervised]`` table of a training config hides the labels of all but a fraction of the
*training* patients (seeded, by patient, label-stratified; validation and test keep theirs),
and/or a mixed dataset's ``[[data.sources]]`` entry with ``split = "unlabelled"`` adds a
source's images as unlabelled data (its labels unused; its patients that a labelled split holds
left out). It trains with one of :data:`METHODS`:

``supervised``
    The labelled part only: the baseline a semi-supervised method has to beat.
``mean_teacher``
    Tarvainen and Valpola (2017): the teacher is the EMA of the student's weights (the
    trainer's ``[train] ema_decay``); on every step the student sees one augmented view of a
    batch of unlabelled images, the teacher another, and the mean squared difference of their
    probabilities is added to the supervised loss with a weight ramped up from 0 (Laine and
    Aila's ``exp(-5 (1 - t)^2)``).
``pseudo_label``
    The EMA teacher's probabilities on one view become targets for the student on the other,
    per label and only where the teacher is confident (``p >= threshold`` positive, ``p <= 1 -
    threshold`` negative); the rest is masked out of the configured (masked) loss, exactly as an
    uncertain label is.

Both methods validate, choose thresholds, test and export with the EMA weights. The number of
labelled and unlabelled samples and patients goes into ``results.json`` and the model card.

::

    [semisupervised]
    method = "mean_teacher"     # supervised | mean_teacher | pseudo_label
    labelled_fraction = 0.1     # of the training patients; the rest become unlabelled
    consistency_weight = 10.0   # mean teacher: weight of the consistency term after ramp-up
    pseudo_weight = 1.0         # pseudo_label: weight of the pseudo-label term after ramp-up
    threshold = 0.95            # pseudo_label: teacher confidence for a pseudo-label
    rampup_epochs = 5
    unlabelled_batch_ratio = 1  # unlabelled images per step, in labelled batch sizes
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.datasets import Sample
from training.errors import TrainingError
from training.loader import Batch, SampleDataset, collate
from training.splits import patient_split
from training.trainer import Trainer, TrainSettings, logits_of

log = logging.getLogger(__name__)

METHODS = ("supervised", "mean_teacher", "pseudo_label")
UNLABELLED = "unlabelled"
_DESCRIPTIONS = {
    "supervised": "supervised",
    "mean_teacher": "mean teacher",
    "pseudo_label": "pseudo-labels from the EMA teacher",
}


@dataclass(frozen=True)
class SemiSupervisedSettings:
    """The ``[semisupervised]`` table; the defaults are plain supervised training.

    Attributes
    ----------
    method : str
        One of :data:`METHODS`.
    labelled_fraction : float
        Fraction of the training patients whose labels are kept, in (0, 1].
    consistency_weight, pseudo_weight : float
        Weight of the mean-teacher consistency term, of the pseudo-label term, after ramp-up.
    threshold : float
        Teacher probability from which a pseudo-label is taken, in (0.5, 1).
    rampup_epochs : float
        Epochs over which the unlabelled term's weight rises from 0 to its full value.
    unlabelled_batch_ratio : int
        Unlabelled images per step, as a multiple of the labelled batch size.
    """

    method: str = "supervised"
    labelled_fraction: float = 1.0
    consistency_weight: float = 10.0
    pseudo_weight: float = 1.0
    threshold: float = 0.95
    rampup_epochs: float = 5.0
    unlabelled_batch_ratio: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrainingError(
                f"[semisupervised] method must be one of {METHODS}, not {self.method!r}"
            )
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise TrainingError("[semisupervised] labelled_fraction must be in (0, 1]")
        if not 0.5 < self.threshold < 1.0:
            raise TrainingError("[semisupervised] threshold must be in (0.5, 1)")
        if self.consistency_weight < 0 or self.pseudo_weight < 0 or self.rampup_epochs < 0:
            raise TrainingError("[semisupervised] weights and rampup_epochs must be >= 0")
        if self.unlabelled_batch_ratio < 1:
            raise TrainingError("[semisupervised] unlabelled_batch_ratio must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemiSupervisedSettings:
        """The settings of a config's ``[semisupervised]`` table, unknown keys refused."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise TrainingError(f"unknown [semisupervised] keys: {sorted(unknown)}")
        return cls(**data)

    @property
    def uses_unlabelled(self) -> bool:
        """Whether the method trains on the unlabelled part."""
        return self.method != "supervised"

    @property
    def active(self) -> bool:
        """Whether the table changes anything about a plain supervised run."""
        return self.uses_unlabelled or self.labelled_fraction < 1.0


def hide_labels(
    parts: dict[str, list[Sample]], fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Keep the labels of ``fraction`` of the training patients; the others' samples join
    the ``"unlabelled"`` part, their targets and masks zeroed so that nothing can learn them.

    Parameters
    ----------
    parts : dict
        ``train``, ``val`` and ``test`` samples; val and test are returned unchanged.
    fraction : float
        Of the training patients, dealt label-stratified in a seeded order
        (:func:`training.splits.patient_split`): a function of the samples and the seed only.
    seed : int

    Raises
    ------
    TrainingError
        If no training patient would keep its labels.
    """
    if fraction >= 1.0:
        return parts
    split = patient_split(parts["train"], {"train": fraction, UNLABELLED: 1.0 - fraction}, seed)
    if not split["train"]:
        raise TrainingError(
            f"labelled_fraction {fraction} of {len(parts['train'])} training samples keeps none"
        )
    hidden = _without_labels(split[UNLABELLED])
    return {**parts, "train": split["train"], UNLABELLED: [*parts.get(UNLABELLED, []), *hidden]}


def unlabelled_part(samples: Sequence[Sample], parts: dict[str, list[Sample]]) -> list[Sample]:
    """A source's images as unlabelled data: without their labels, and without the patients
    that a labelled part holds (an unlabelled image of a test patient would leak the test).

    Parameters
    ----------
    samples : sequence of Sample
        Of the sources whose ``split`` is ``"unlabelled"``.
    parts : dict
        The labelled parts (``train``, ``val``, ``test``).
    """
    labelled = {s.patient_id for part in parts.values() for s in part}
    kept = [s for s in samples if s.patient_id not in labelled]
    if len(kept) < len(samples):
        log.warning(
            "unlabelled sources: left out %d images of patients in a labelled split",
            len(samples) - len(kept),
        )
    return _without_labels(kept)


def _without_labels(samples: Sequence[Sample]) -> list[Sample]:
    return [
        replace(s, targets=np.zeros_like(s.targets), mask=np.zeros_like(s.mask)) for s in samples
    ]


def label_counts(parts: dict[str, list[Sample]]) -> dict[str, int]:
    """Labelled and unlabelled training samples and patients, for results and the card."""
    unlabelled = parts.get(UNLABELLED, [])
    return {
        "labelled_samples": len(parts["train"]),
        "labelled_patients": len({s.patient_id for s in parts["train"]}),
        "unlabelled_samples": len(unlabelled),
        "unlabelled_patients": len({s.patient_id for s in unlabelled}),
    }


def describe(settings: SemiSupervisedSettings, counts: dict[str, int], ema_decay: float) -> str:
    """One sentence for the model card: the method, its settings, labelled/unlabelled sizes."""
    method = _DESCRIPTIONS[settings.method]
    if settings.method == "mean_teacher":
        method += (
            f" (EMA teacher, decay {ema_decay}; consistency weight {settings.consistency_weight} "
            f"ramped up over {settings.rampup_epochs:g} epochs)"
        )
    elif settings.method == "pseudo_label":
        method += (
            f" (decay {ema_decay}; confidence threshold {settings.threshold}, weight "
            f"{settings.pseudo_weight} ramped up over {settings.rampup_epochs:g} epochs)"
        )
    text = (
        f"Method: {method}, on {counts['labelled_samples']:,} labelled training samples "
        f"({counts['labelled_patients']:,} patients)"
    )
    if counts["unlabelled_samples"]:
        hidden = (
            f"; the labels of {1 - settings.labelled_fraction:.0%} of the training patients hidden"
            if settings.labelled_fraction < 1
            else ""
        )
        use = "used" if settings.uses_unlabelled else "not used"
        text += (
            f" and {counts['unlabelled_samples']:,} unlabelled samples "
            f"({counts['unlabelled_patients']:,} patients{hidden}), {use}"
        )
    return text + "."


def sigmoid_rampup(progress: float) -> float:
    """Laine and Aila's ramp-up ``exp(-5 (1 - t)^2)`` for ``t`` in [0, 1] (1 beyond)."""
    t = min(max(progress, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the student's and the teacher's probabilities (mean
    teacher); the teacher is a target, so no gradient flows into it."""
    return F.mse_loss(torch.sigmoid(student_logits), torch.sigmoid(teacher_logits.detach()))


def pseudo_labels(
    teacher_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and mask from the teacher: 1 where ``p >= threshold``, 0 where ``p <= 1 -
    threshold``, masked out in between.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``targets`` and ``mask`` of the logits' shape, float 0/1.
    """
    p = torch.sigmoid(teacher_logits.detach().float())
    targets = (p >= threshold).float()
    mask = (targets > 0) | (p <= 1.0 - threshold)
    return targets, mask.float()


class TwoViews(Dataset):
    """Each sample of an augmenting :class:`SampleDataset` twice, differently augmented."""

    def __init__(self, dataset: SampleDataset) -> None:
        if not dataset.augment:
            raise TrainingError("two views of an unlabelled image need augmentation")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.dataset[index], self.dataset[index]


def _collate_views(items: Sequence[tuple[Any, Any]]) -> tuple[Batch, Batch]:
    return collate([a for a, _ in items]), collate([b for _, b in items])


class SemiSupervisedTrainer(Trainer):
    """The trainer with an unlabelled term: mean-teacher consistency or confident
    pseudo-labels, both from the EMA teacher (:attr:`Trainer.ema`).

    Parameters
    ----------
    model, loss, settings, run_dir, device, progress, **options
        As for :class:`training.trainer.Trainer`; ``settings.ema_decay`` must be > 0.
    semi : SemiSupervisedSettings
        A method that uses unlabelled data.
    unlabelled : SampleDataset
        The unlabelled images, with augmentation on.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        settings: TrainSettings,
        run_dir: Path,
        semi: SemiSupervisedSettings,
        unlabelled: SampleDataset,
        device: str | torch.device = "auto",
        progress: bool | None = None,
        **options: Any,
    ) -> None:
        if not semi.uses_unlabelled:
            raise TrainingError("the semi-supervised trainer needs mean_teacher or pseudo_label")
        if settings.ema_decay <= 0:
            raise TrainingError(
                f"{semi.method} learns from the EMA teacher: set [train] ema_decay, e.g. 0.99"
            )
        if len(unlabelled.samples) < 2:  # a batch of one breaks batch normalisation
            raise TrainingError(f"{semi.method} needs at least two unlabelled samples")
        super().__init__(model, loss, settings, run_dir, device, progress, **options)
        self.semi = semi
        self.views = TwoViews(unlabelled)
        self._stream: Iterator[tuple[Batch, Batch]] = iter(())
        self._epoch, self._step, self._steps = 0, 0, 1
        self._totals: dict[str, float] = {}

    def _train_epoch(self, dataset: SampleDataset, epoch: int) -> float:
        self._stream = self._unlabelled_batches(epoch)
        self._epoch, self._step = epoch, 0
        self._steps = self.settings.max_steps_per_epoch or len(
            self._loader(dataset, epoch, train=True)
        )
        self._totals = {"unlabelled_loss": 0.0, "weight": 0.0, "confident": 0.0}
        loss = super()._train_epoch(dataset, epoch)
        steps = max(self._step, 1)
        row = {"epoch": epoch, **{k: v / steps for k, v in self._totals.items()}}
        with (self.run_dir / "semisupervised.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        return loss

    def _unlabelled_batches(self, epoch: int) -> Iterator[tuple[Batch, Batch]]:
        """Endless shuffled passes over the unlabelled views, seeded by ``(seed, epoch)``."""
        seed = self.settings.seed
        self.views.dataset.generator.manual_seed(seed * 10_061 + epoch)
        batch_size = min(
            self.settings.batch_size * self.semi.unlabelled_batch_ratio, len(self.views)
        )
        loader = DataLoader(
            self.views,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed * 10_039 + epoch),
            collate_fn=_collate_views,
            drop_last=True,  # never a last batch of one; never an empty loader
        )
        while True:
            yield from loader

    def rampup(self) -> float:
        """The unlabelled term's ramp-up factor at the current step."""
        if self.semi.rampup_epochs == 0:
            return 1.0
        return sigmoid_rampup((self._epoch + self._step / self._steps) / self.semi.rampup_epochs)

    def _logits(self, model: nn.Module, view: Batch) -> torch.Tensor:
        view = self._standardised(view)
        return logits_of(model, view, self.device, self.memory_format).float()

    def _batch_loss(self, batch: Batch) -> torch.Tensor:
        supervised = super()._batch_loss(batch)
        student_view, teacher_view = next(self._stream)
        assert self.ema is not None
        self.ema.eval()
        with torch.no_grad(), self._autocast():
            teacher = self._logits(self.ema, teacher_view)
        with self._autocast():
            student = self._logits(self.model, student_view)
        if self.semi.method == "mean_teacher":
            unlabelled = consistency_loss(student, teacher)
            weight = self.semi.consistency_weight * self.rampup()
            confident = 1.0
        else:
            targets, mask = pseudo_labels(teacher, self.semi.threshold)
            # Mean over all unlabelled entries (FixMatch): few confident ones weigh little.
            unlabelled = self.loss(student, targets, mask) * mask.mean()
            weight = self.semi.pseudo_weight * self.rampup()
            confident = float(mask.mean())
        self._step += 1
        self._totals["unlabelled_loss"] += float(unlabelled.detach())
        self._totals["weight"] += weight
        self._totals["confident"] += confident
        return supervised + weight * unlabelled


def make_trainer(
    model: nn.Module,
    loss: nn.Module,
    settings: TrainSettings,
    run_dir: Path,
    semi: SemiSupervisedSettings,
    unlabelled: SampleDataset | None,
    device: str | torch.device = "auto",
    **options: Any,
) -> Trainer:
    """The trainer a config asks for: the plain one unless the method uses unlabelled data.
    ``options`` are :class:`training.trainer.Trainer`'s other keyword arguments."""
    if not semi.uses_unlabelled:
        return Trainer(model, loss, settings, run_dir, device=device, **options)
    if unlabelled is None or unlabelled.spec is None:
        raise TrainingError(f"{semi.method} needs an image model and unlabelled images")
    return SemiSupervisedTrainer(
        model, loss, settings, run_dir, semi, unlabelled, device=device, **options
    )
