"""The trainer: AdamW, a learning-rate schedule, early stopping, gradient clipping, EMA of the
weights (seed 001), mixed precision on a GPU, deterministic seeding, checkpoint and resume.

Determinism: every epoch re-seeds the global torch generator (dropout), the shuffling and the
augmentation from ``(seed, epoch)``, so a run resumed from its epoch-``k`` checkpoint continues
exactly as the uninterrupted run would (the test checks it bit for bit on the CPU).

Each epoch appends a row to ``epochs.csv`` and ``epochs.jsonl`` in the run directory, writes
it with each label's validation AUROC to the TensorBoard event file there
(:mod:`training.events`), and rewrites ``last.pt`` (everything needed to resume); the best
epoch's weights, by the monitored validation figure, go to ``best.pt``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from models.joint import JointEmbeddings
from models.network import CxrClassifier, TextBatch
from training.contrastive import ContrastiveAlignment
from training.errors import TrainingError
from training.events import EventLog
from training.loader import Batch, SampleDataset, collate
from training.metrics import label_aurocs, nan_mean
from training.normalization import standardise_batch
from training.splits import balanced_sampler
from training.textmodel import TextOnlyClassifier

log = logging.getLogger(__name__)

SCHEDULES = ("plateau", "cosine", "none")
MONITORS = ("auroc", "loss")
CHECKPOINT_FORMAT = "cxrnode-checkpoint/1"


@dataclass(frozen=True)
class TrainSettings:
    """How to train; every field has the seeds' usual value as default.

    Attributes
    ----------
    epochs, batch_size, lr, weight_decay
        AdamW over the trainable parameters.
    schedule : str
        ``plateau`` (ReduceLROnPlateau on the monitored figure, factor 0.1, seed 004),
        ``cosine`` (cosine decay after ``warmup_epochs`` of linear warm-up), or ``none``.
    patience : int
        Early stopping: epochs without improvement of the monitored figure (0: off).
    grad_clip : float
        Maximum gradient norm (0: off).
    ema_decay : float
        Exponential moving average of the weights (seed 001), e.g. 0.999; 0 turns it off.
        With EMA, validation and export use the averaged weights.
    amp : str
        ``auto`` (bf16 autocast on CUDA, off on the CPU), ``bf16``, ``fp16``, ``off``.
    seed : int
    balance : str
        ``none`` or ``sampler`` (draw normal and abnormal studies equally often).
    augment : bool
        Random horizontal flips.
    monitor : str
        ``auroc`` (validation macro AUROC) or ``loss`` (validation loss).
    max_steps_per_epoch : int
        Stop an epoch early (0: the whole epoch); for smoke tests.
    channels_last : bool
        Keep the image encoder's activations channels-last (NHWC). On this project's 2-core
        CPU it halves an EfficientNet-Lite0 training step at 224 px (0.16 to 0.08 s per
        image, measured); on a GPU it is what the tensor cores want. Numerically the same
        network; only the memory layout differs.
    """

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-2
    schedule: str = "plateau"
    warmup_epochs: int = 0
    plateau_patience: int = 2
    patience: int = 5
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    amp: str = "auto"
    seed: int = 0
    balance: str = "none"
    augment: bool = False
    monitor: str = "auroc"
    max_steps_per_epoch: int = 0
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.monitor not in MONITORS:
            raise TrainingError(f"monitor must be one of {MONITORS}, not {self.monitor!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise TrainingError(f"amp must be auto, bf16, fp16 or off, not {self.amp!r}")
        if self.balance not in ("none", "sampler"):
            raise TrainingError(f"balance must be none or sampler, not {self.balance!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainingError("ema_decay must be in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise TrainingError("epochs and batch_size must be >= 1 and lr > 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise TrainingError(f"unknown [train] keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` ends with."""

    best_epoch: int
    best_value: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def logits_of(
    model: nn.Module,
    batch: Batch,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Run a classifier (multimodal or text-only, or its EMA average) on a batch, its images
    in ``memory_format``."""
    unwrapped = model.module if isinstance(model, AveragedModel) else model
    if isinstance(unwrapped, TextOnlyClassifier):
        text = unwrapped.tokenize(batch.texts)
        return model(text.to(device, non_blocking=True) if text else None, len(batch))
    if not isinstance(unwrapped, CxrClassifier):
        raise TrainingError("an image model needs a batch with images")
    return model(*model_inputs(unwrapped, batch, device, memory_format))


def model_inputs(
    model: CxrClassifier,
    batch: Batch,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[torch.Tensor, TextBatch | None]:
    """A batch's images (in ``memory_format``) and tokenized reports, on ``device``."""
    if batch.images is None:
        raise TrainingError("an image model needs a batch with images")
    text = model.tokenize(batch.texts) if model.uses_text else None
    images = batch.images.to(device, non_blocking=True, memory_format=memory_format)
    return images, text.to(device, non_blocking=True) if text else None


class Trainer:
    """Train one model on one training set, validating every epoch.

    Parameters
    ----------
    model : CxrClassifier or TextOnlyClassifier
    loss : nn.Module
        Called as ``loss(logits, targets, mask)``.
    settings : TrainSettings
    run_dir : pathlib.Path
        Checkpoints and the epoch log go here.
    device : str or torch.device
        ``"auto"``: CUDA when present.
    progress : bool or None
        Progress bars (``None``: when standard error is a terminal).
    label_names : sequence of str
        The model's outputs, for the per-label validation AUROCs in TensorBoard (default
        ``label_1``, ``label_2``...).
    standardise_batches : bool
        Standardise each training batch's images by its own per-channel statistics (seed 004,
        :func:`training.normalization.standardise_batch`); validation is left as the dataset
        normalises it.
    alignment : ContrastiveAlignment or None
        The contrastive term added to each training batch's loss (``training.contrastive``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        settings: TrainSettings,
        run_dir: Path,
        device: str | torch.device = "auto",
        progress: bool | None = None,
        label_names: Sequence[str] = (),
        standardise_batches: bool = False,
        alignment: ContrastiveAlignment | None = None,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.memory_format = (
            torch.channels_last if settings.channels_last else torch.contiguous_format
        )
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.loss = loss.to(self.device)
        self.alignment = alignment
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.label_names = tuple(label_names)
        self.standardise_batches = standardise_batches
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            params, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.scheduler = self._scheduler()
        self.ema = (
            AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True
            )
            if settings.ema_decay > 0
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._amp_dtype() is torch.float16)

    # --- set-up ----------------------------------------------------------------------------

    def _scheduler(self) -> Any:
        s = self.settings
        if s.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="max" if s.monitor == "auroc" else "min",
                factor=0.1,
                patience=s.plateau_patience,
            )
        if s.schedule == "cosine":
            warmup, total = s.warmup_epochs, s.epochs

            def factor(epoch: int) -> float:
                if epoch < warmup:
                    return (epoch + 1) / (warmup + 1)
                progress = (epoch - warmup) / max(total - warmup, 1)
                return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        return None

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.settings.amp
        if self.device.type != "cuda" or amp == "off":
            return None
        return torch.float16 if amp == "fp16" else torch.bfloat16

    def _autocast(self) -> AbstractContextManager[object]:
        dtype = self._amp_dtype()
        return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()

    def _loader(self, dataset: SampleDataset, epoch: int, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.settings.seed * 10_007 + epoch)
        dataset.generator.manual_seed(self.settings.seed * 10_009 + epoch)
        sampler = None
        if train and self.settings.balance == "sampler":
            sampler = balanced_sampler(dataset.samples, generator)
        return DataLoader(
            dataset,
            batch_size=self.settings.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=generator,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            # A last batch of one would break batch normalisation.
            drop_last=train and len(dataset) > self.settings.batch_size,
        )

    # --- the loop --------------------------------------------------------------------------

    def fit(
        self,
        train: SampleDataset,
        val: SampleDataset,
        resume: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> FitResult:
        """Train until ``epochs`` or early stopping; resume from ``last.pt`` when present.

        Returns
        -------
        FitResult
            The model is left holding the best epoch's weights (EMA weights with EMA).
        """
        state = self._resume() if resume else None
        start = 0 if state is None else state["epoch"] + 1
        result = FitResult(-1, -math.inf) if state is None else FitResult(**state["result"])
        bad_epochs = 0 if state is None else state["bad_epochs"]
        with EventLog(self.run_dir) as events:
            self._epochs(train, val, start, result, bad_epochs, events, on_epoch)
        best = self._best_state()
        self.model.load_state_dict(best, strict=True)
        if self.ema is not None:
            # predict() reads the EMA weights: they must be the best epoch's too, not the last's.
            self.ema.module.load_state_dict(best, strict=True)
        return result

    def _epochs(
        self,
        train: SampleDataset,
        val: SampleDataset,
        start: int,
        result: FitResult,
        bad_epochs: int,
        events: EventLog,
        on_epoch: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        """Run epochs from ``start`` on, into ``result``."""
        s = self.settings
        for epoch in range(start, s.epochs):
            if s.patience and bad_epochs >= s.patience:
                result.stopped_early = True
                break
            torch.manual_seed(s.seed * 10_037 + epoch)
            began = time.monotonic()
            train_loss = self._train_epoch(train, epoch)
            val_loss, aurocs = self._validation(val)
            val_auroc = nan_mean(aurocs)
            value = val_auroc if s.monitor == "auroc" else -val_loss
            improved = value > result.best_value + 1e-6 or result.best_epoch < 0
            if improved:
                result.best_epoch, result.best_value, bad_epochs = epoch, float(value), 0
                torch.save(self._eval_model().state_dict(), self.run_dir / "best.pt")
            else:
                bad_epochs += 1
            self._step_schedule(value)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_auroc": val_auroc,
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": round(time.monotonic() - began, 2),
                "best": improved,
            }
            result.history.append(row)
            self._log(row)
            events.epoch(row, self._names(len(aurocs)), aurocs)
            self._checkpoint(epoch, result, bad_epochs)
            if on_epoch is not None:
                on_epoch(row)
        else:
            result.stopped_early = bool(
                s.patience and bad_epochs >= s.patience and len(result.history) < s.epochs
            )

    def _train_epoch(self, dataset: SampleDataset, epoch: int) -> float:
        self.model.train()
        total, count = 0.0, 0
        loader = self._loader(dataset, epoch, train=True)
        steps = self.settings.max_steps_per_epoch or len(loader)
        bar = _bar(loader, steps, f"epoch {epoch + 1}/{self.settings.epochs}", self.progress)
        for step, batch in enumerate(bar):
            if step >= steps:
                break
            loss = self._batch_loss(batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.settings.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], self.settings.grad_clip
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total += float(loss.detach()) * len(batch)
            count += len(batch)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    def _batch_loss(self, batch: Batch) -> torch.Tensor:
        """The loss of one training batch, with the contrastive term where an alignment trains
        a joint space (the semi-supervised trainer adds its unlabelled term here)."""
        targets = batch.targets.to(self.device, non_blocking=True)
        mask = batch.mask.to(self.device, non_blocking=True)
        with self._autocast():
            logits, joint = self._outputs(self._standardised(batch))
        loss = self.loss(logits.float(), targets, mask)
        if joint is not None:
            loss = loss + self.alignment(joint)
        return loss

    def _standardised(self, batch: Batch) -> Batch:
        """The batch as the model trains on it (each batch's own statistics, where asked)."""
        if self.standardise_batches and batch.images is not None:
            return replace(batch, images=standardise_batch(batch.images))
        return batch

    def _outputs(self, batch: Batch) -> tuple[torch.Tensor, JointEmbeddings | None]:
        """A training batch's logits, and its joint embeddings where an alignment trains them."""
        if self.alignment is None:
            return logits_of(self.model, batch, self.device, self.memory_format), None
        encoded = self.model.encode(
            *model_inputs(self.model, batch, self.device, self.memory_format)
        )
        return self.model.classify(encoded.fused), encoded.joint

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def predict(self, dataset: SampleDataset) -> np.ndarray:
        """``(N, L)`` probabilities of a dataset, in its order, with the evaluation weights."""
        model = self._eval_model()
        return predict(
            model,
            dataset,
            self.settings.batch_size,
            self.device,
            self._autocast,
            self.memory_format,
        )

    def validate(self, dataset: SampleDataset) -> tuple[float, float]:
        """Validation loss and macro AUROC (labels with one class only left out)."""
        loss, aurocs = self._validation(dataset)
        return loss, nan_mean(aurocs)

    def _validation(self, dataset: SampleDataset) -> tuple[float, list[float]]:
        """Validation loss and each label's AUROC (``nan``: one class only)."""
        probabilities = self.predict(dataset)
        targets = np.stack([s.targets for s in dataset.samples])
        mask = np.stack([s.mask for s in dataset.samples])
        logits = torch.logit(torch.from_numpy(probabilities).clamp(1e-7, 1 - 1e-7))
        with torch.no_grad():
            loss = float(
                self.loss(
                    logits.to(self.device),
                    torch.from_numpy(targets).to(self.device),
                    torch.from_numpy(mask).to(self.device),
                )
            )
        return loss, label_aurocs(targets, mask, probabilities)

    def _names(self, count: int) -> tuple[str, ...]:
        if len(self.label_names) == count:
            return self.label_names
        return tuple(f"label_{j + 1}" for j in range(count))

    def _step_schedule(self, value: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(value if self.settings.monitor == "auroc" else -value)
        elif self.scheduler is not None:
            self.scheduler.step()

    # --- files -----------------------------------------------------------------------------

    def _log(self, row: dict[str, Any]) -> None:
        csv_path = self.run_dir / "epochs.csv"
        new = not csv_path.exists()
        with csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        with (self.run_dir / "epochs.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val AUROC %.4f",
            row["epoch"] + 1,
            row["train_loss"],
            row["val_loss"],
            row["val_auroc"],
        )

    def _checkpoint(self, epoch: int, result: FitResult, bad_epochs: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict(),
            "result": asdict(result),
            "bad_epochs": bad_epochs,
            "settings": asdict(self.settings),
        }
        scratch = self.run_dir / "last.pt.tmp"
        torch.save(state, scratch)
        scratch.replace(self.run_dir / "last.pt")

    def _resume(self) -> dict[str, Any] | None:
        path = self.run_dir / "last.pt"
        if not path.exists():
            return None
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path} is not a cxrnode checkpoint")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        log.info("resuming %s after epoch %d", self.run_dir, state["epoch"] + 1)
        return state

    def _best_state(self) -> dict[str, torch.Tensor]:
        return torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=True)


def predict(
    model: nn.Module,
    dataset: SampleDataset,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> np.ndarray:
    """``(N, L)`` sigmoid outputs of a model over a dataset, in order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    outputs = []
    with torch.inference_mode(), autocast():
        for batch in loader:
            logits = logits_of(model, batch, device, memory_format)
            outputs.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(outputs).numpy()


def _bar(iterable: Any, total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)
