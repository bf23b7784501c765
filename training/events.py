"""TensorBoard event files beside ``epochs.csv``, to watch a run as seed 004 does.

``tensorboard --logdir RUN_DIR`` shows, per epoch, the training and validation loss, the
validation macro AUROC and each label's, and the learning rate (``train/``, ``val/``, ``lr``);
after the run, every label's test figures at its threshold (``test/``) at the best epoch's
step. A resumed run adds an event file to the same directory; TensorBoard reads them as one run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from training.metrics import Evaluation

# What the test figures of each label are called in TensorBoard, and their Evaluation keys.
TEST_FIGURES = ("auroc", "average_precision", "recall", "specificity", "f1", "ece")


def tag(*parts: str) -> str:
    """A TensorBoard tag of parts, each with what TensorBoard would rename turned into ``_``."""
    return "/".join(re.sub(r"[^-\w.]", "_", part) for part in parts)


class EventLog:
    """One event file of a run directory; use as a context manager, or :meth:`close` it.

    Parameters
    ----------
    run_dir : pathlib.Path
        The directory ``tensorboard --logdir`` is pointed at.
    """

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: it takes a second

        self._writer = SummaryWriter(log_dir=str(run_dir))

    def epoch(self, row: dict[str, Any], names: Sequence[str], aurocs: Sequence[float]) -> None:
        """Write one ``epochs.csv`` row and the per-label validation AUROCs."""
        step = int(row["epoch"]) + 1
        scalars = {
            tag("train", "loss"): row["train_loss"],
            tag("val", "loss"): row["val_loss"],
            tag("val", "auroc", "macro"): row["val_auroc"],
            "lr": row["lr"],
            **{tag("val", "auroc", name): value for name, value in zip(names, aurocs, strict=True)},
        }
        self._scalars(scalars, step)

    def test(self, evaluation: Evaluation, step: int) -> None:
        """Write the test figures of every label and their macro means."""
        scalars = {tag("test", key, "macro"): evaluation.macro(key) for key in TEST_FIGURES}
        for row in evaluation.rows():
            scalars.update({tag("test", key, row["label"]): row[key] for key in TEST_FIGURES})
        self._scalars(scalars, step)

    def _scalars(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            if value is not None and not math.isnan(float(value)):  # a one-class label has none
                self._writer.add_scalar(name, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
