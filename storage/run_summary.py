"""What a run's inference left in the database, written and read in this one place.

The worker keeps a summary of each run in ``jobs.result`` and, with the run's number and the
model, in the detail of its ``inference.completed`` audit event: per image the probabilities
and the labels called present, plus how many images were unreadable, where the report text came
from, why the run was made, how many studies shared its forward pass, and the stage timings.
The admin's queries, pages and ``cxrnode audit`` read it back from either place.

Reading is tolerant: rows written by older versions lack keys added since (``text`` and
``reason`` came with report pairing, ``batch_studies`` with batching) and read as None; keys this
version does not know are ignored, so a newer node's rows do not break an older admin.

The summary lives in ``storage`` rather than ``node`` because the storage queries read it, and
storage does not import the node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# How many decimals the stored figures keep: enough to tell a threshold crossing, few enough
# for an audit detail a person reads.
_PROBABILITY_DECIMALS = 4
_SECONDS_DECIMALS = 4


@dataclass(frozen=True)
class Finding:
    """One label of a run: its highest probability over the run's images, and whether any
    image was called positive at the model's threshold."""

    name: str
    probability: float
    present: bool


@dataclass(frozen=True)
class ImageSummary:
    """One image's results as the audit keeps them: no pixels, no heatmaps."""

    sop_uid: str | None
    probabilities: dict[str, float]  # label name -> probability, in the model's label order
    present: tuple[str, ...]  # the labels at or above their threshold

    @classmethod
    def of(
        cls, sop_uid: str, probabilities: Mapping[str, float], present: Iterable[str]
    ) -> ImageSummary:
        """An image's summary from the worker's figures, rounded as stored."""
        return cls(
            sop_uid=sop_uid,
            probabilities={
                name: round(float(p), _PROBABILITY_DECIMALS) for name, p in probabilities.items()
            },
            present=tuple(present),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "sop_uid": self.sop_uid,
            "probabilities": dict(self.probabilities),
            "present": list(self.present),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageSummary:
        return cls(
            sop_uid=data.get("sop_uid"),
            probabilities={
                str(name): float(p) for name, p in (data.get("probabilities") or {}).items()
            },
            present=tuple(data.get("present") or ()),
        )


@dataclass(frozen=True)
class RunSummary:
    """The summary of one run's inference (``jobs.result``).

    Attributes
    ----------
    images:
        Each decoded image's results, in the order the run read them.
    unreadable:
        How many of the study's images could not be decoded.
    text:
        Where the report text the model read came from (``"none"`` for an image-only model);
        None in rows written before report pairing.
    reason:
        Why the run was made (``first``, ``late_report``, ...); None before report pairing.
    batch_studies:
        How many studies shared the run's forward pass; None before batching.
    timings:
        Seconds per stage (decode, inference, Grad-CAM, build, database ...).
    """

    images: tuple[ImageSummary, ...] = ()
    unreadable: int = 0
    text: str | None = None
    reason: str | None = None
    batch_studies: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON kept in ``jobs.result``; timings rounded as stored."""
        return {
            "images": [image.to_json() for image in self.images],
            "unreadable": self.unreadable,
            "text": self.text,
            "reason": self.reason,
            "batch_studies": self.batch_studies,
            "timings": {k: round(v, _SECONDS_DECIMALS) for k, v in self.timings.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RunSummary:
        """A summary read back from ``jobs.result`` or an ``inference.completed`` detail, of
        this version or an older one; None (a run with no result yet) reads as empty."""
        data = data or {}
        return cls(
            images=tuple(ImageSummary.from_json(i) for i in data.get("images") or ()),
            unreadable=int(data.get("unreadable") or 0),
            text=data.get("text"),
            reason=data.get("reason"),
            batch_studies=data.get("batch_studies"),
            timings={str(k): float(v) for k, v in (data.get("timings") or {}).items()},
        )

    @property
    def findings(self) -> list[Finding]:
        """Study-level findings: the highest probability of each label over the images,
        present if any image was positive; present ones first, then by probability."""
        best: dict[str, float] = {}
        present: set[str] = set()
        for image in self.images:
            for name, probability in image.probabilities.items():
                best[name] = max(best.get(name, 0.0), probability)
            present.update(image.present)
        return sorted(
            (Finding(name, p, name in present) for name, p in best.items()),
            key=lambda f: (-f.present, -f.probability, f.name),
        )


@dataclass(frozen=True)
class InferenceCompleted:
    """The detail of an ``inference.completed`` audit event: the run's number and model (the
    job's columns, which the event must carry on its own) and the run's summary."""

    run: int | None
    model: str | None
    summary: RunSummary

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "model": self.model, **self.summary.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> InferenceCompleted:
        data = data or {}
        return cls(data.get("run"), data.get("model"), RunSummary.from_json(data))
