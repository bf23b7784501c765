"""Errors raised by ``training``: ``ValueError`` subclasses naming what to fix."""

from models.errors import ModelPackageError


class TrainingError(ValueError):
    """A training or evaluation run cannot go on; the message says why."""


class DatasetError(TrainingError):
    """A dataset's files or columns are not what its reader expects."""


class LeakageError(TrainingError):
    """A patient appears in more than one split: metrics would be inflated."""


__all__ = ["DatasetError", "LeakageError", "ModelPackageError", "TrainingError"]
