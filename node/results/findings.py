"""What the result writers are given: one model run's findings per image, and the algorithm."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from node.errors import CxrNodeError
from node.results.heatmap import GridHeatmap

if TYPE_CHECKING:  # the writers need no torch, which models.package imports
    from models.package import LabelConfig
GRADCAM = "gradcam"
INTEGRATED_GRADIENTS = "integrated_gradients"
# Each explanation method the captures draw (``models.attribution``), and the attribute of
# ImageResult holding its maps.
METHODS = {GRADCAM: "heatmaps", INTEGRATED_GRADIENTS: "attributions"}
# What a capture's caption and its legend (at most 8 characters) call each method.
METHOD_NAMES = {GRADCAM: "Grad-CAM", INTEGRATED_GRADIENTS: "Integrated Gradients"}
LEGEND_TITLES = {GRADCAM: "Grad-CAM", INTEGRATED_GRADIENTS: "IG"}


class ResultInputError(CxrNodeError, ValueError):
    """A finding, algorithm or image handed to the result writers is inconsistent.

    The message names the attribute and the value that is wrong.
    """


@dataclass(frozen=True)
class Finding:
    """One label's result for one image.

    Attributes
    ----------
    name : str
        Label name as the model declares it, e.g. ``"Cardiomegaly"``.
    code_value, coding_scheme, code_meaning : str
        The label's coded concept, e.g. ``"8186001"``, ``"SCT"``, ``"Cardiomegaly"``.
    probability : float
        Model output in [0, 1].
    threshold : float
        Operating threshold in [0, 1]; the finding is present at or above it.
    """

    name: str
    code_value: str
    coding_scheme: str
    code_meaning: str
    probability: float
    threshold: float

    def __post_init__(self) -> None:
        for attribute in ("name", "code_value", "coding_scheme", "code_meaning"):
            if not str(getattr(self, attribute)).strip():
                raise ResultInputError(f"Finding.{attribute} is empty (finding {self.name!r})")
        for attribute in ("probability", "threshold"):
            value = getattr(self, attribute)
            if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value)):
                raise ResultInputError(f"Finding.{attribute} of {self.name!r} is {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ResultInputError(
                    f"Finding.{attribute} of {self.name!r} is {value}, outside [0, 1]"
                )

    @property
    def present(self) -> bool:
        """Whether the model calls the finding present at its operating threshold."""
        return self.probability >= self.threshold


def model_findings(
    labels: Sequence[LabelConfig], probabilities: Sequence[float]
) -> tuple[Finding, ...]:
    """Every label's finding for one image, in model order: its coded concept, the model's
    probability and the label's threshold.

    Parameters
    ----------
    labels : sequence of models.package.LabelConfig
        The package's labels.
    probabilities : sequence of float
        The model's output for the image, one per label.
    """
    return tuple(
        Finding(
            name=label.name,
            code_value=label.code_value,
            coding_scheme=label.coding_scheme,
            code_meaning=label.code_meaning,
            probability=float(p),
            threshold=float(label.threshold),
        )
        for label, p in zip(labels, probabilities, strict=True)
    )


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that produced the findings.

    Attributes
    ----------
    name, version : str
        Model name and version as recorded in its package.
    package_sha256 : str
        Digest of the model package, so a result can be traced to the exact weights.
    trained : bool
        False for reference/demo models; their `disclaimer` then goes into every output.
    disclaimer : str
        E.g. ``"NOT A TRAINED CLINICAL MODEL — ..."``.
    manufacturer : str
        Who makes the algorithm; written as Manufacturer and in the device observer.
    """

    name: str
    version: str
    package_sha256: str
    trained: bool
    disclaimer: str
    manufacturer: str = "cxrnode"

    def __post_init__(self) -> None:
        for attribute in ("name", "version", "manufacturer"):
            if not getattr(self, attribute).strip():
                raise ResultInputError(f"AlgorithmInfo.{attribute} is empty")
        if not self.trained and not self.disclaimer.strip():
            raise ResultInputError(
                "AlgorithmInfo.disclaimer is empty but trained is False; an untrained model's "
                "outputs must carry its disclaimer"
            )


@dataclass(frozen=True)
class ImageResult:
    """Everything the writers need about one processed image.

    Attributes
    ----------
    source : pydicom.Dataset
        The source instance as received (header and pixels).
    display : numpy.ndarray
        float32 in [0, 1] on the source pixel grid (rows, cols), MONOCHROME2 polarity,
        already windowed and inverted where needed; or its 256 grey levels as uint8
        (`node.results.heatmap.display_levels`, what the worker hands a builder process):
        the captures draw no more.
    findings : tuple of Finding
        Every label of the model, in model order.
    heatmaps : mapping of str to numpy.ndarray or GridHeatmap
        Finding name to its Grad-CAM map, float32 in [0, 1], same shape as `display`, or the
        map at the model's grid to be drawn there (`GridHeatmap`, what the worker hands a
        builder process); `heatmap` gives either on the source grid. At least every present
        finding and the top finding, where the model can explain them.
    attributions : mapping of str to numpy.ndarray or GridHeatmap
        Finding name to its Integrated Gradients map, as `heatmaps` hold Grad-CAM's; only where
        the model's package asks for the capture (``explanation_captures``), else empty.
    """

    source: pydicom.Dataset
    display: np.ndarray
    findings: tuple[Finding, ...]
    heatmaps: Mapping[str, np.ndarray | GridHeatmap] = field(default_factory=dict)
    attributions: Mapping[str, np.ndarray | GridHeatmap] = field(default_factory=dict)
    # Grid heatmaps drawn on the source grid, once: the regions and the captures read them.
    # Keyed by (method, finding).
    heatmap_cache: dict[tuple[str, str], np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # Regions by level, computed once: the SR, the GSPS and every capture draw the same ones.
    regions_cache: dict[float, list] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # Blended capture pixels by (method, shown finding), computed once: the overview and the
    # top finding's own capture show the same heatmap.
    blend_cache: dict[tuple[str, str | None], tuple[np.ndarray, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        uid = self.source.get("SOPInstanceUID", "<no SOPInstanceUID>")
        required = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        for keyword in (*required, "Rows", "Columns"):
            if keyword not in self.source:
                raise ResultInputError(f"source {uid} has no {keyword}")
        grid = (int(self.source.Rows), int(self.source.Columns))
        if isinstance(self.display, np.ndarray) and self.display.dtype == np.uint8:
            _check_grid("display", self.display, grid, uid)
        else:
            _check_unit_image("display", self.display, grid, uid)
        if not self.findings:
            raise ResultInputError(f"ImageResult.findings of {uid} is empty")
        names = [finding.name for finding in self.findings]
        if len(set(names)) != len(names):
            raise ResultInputError(f"ImageResult.findings of {uid} repeats a label: {names}")
        for attribute in METHODS.values():
            for name, heatmap in getattr(self, attribute).items():
                if name not in names:
                    raise ResultInputError(
                        f"ImageResult.{attribute} has a map for {name!r} of {uid}, which is "
                        f"not one of its findings {names}"
                    )
                if isinstance(heatmap, GridHeatmap):
                    if heatmap.shape != grid:
                        raise ResultInputError(
                            f"ImageResult.{attribute}[{name!r}] of {uid} is for an image of "
                            f"{heatmap.shape}, expected the source grid {grid}"
                        )
                    _check_unit_values(f"{attribute}[{name!r}]", heatmap.grid, uid)
                else:
                    _check_unit_image(f"{attribute}[{name!r}]", heatmap, grid, uid)

    def maps(self, method: str = GRADCAM) -> Mapping[str, np.ndarray | GridHeatmap]:
        """The maps of one explanation method (`METHODS`), by finding name."""
        return getattr(self, METHODS[method])

    def heatmap(self, name: str, method: str = GRADCAM) -> np.ndarray:
        """The map of finding `name` on the source grid, Grad-CAM's (see `heatmaps`) or another
        method's (`METHODS`)."""
        heatmap = self.maps(method)[name]
        if not isinstance(heatmap, GridHeatmap):
            return heatmap
        drawn = self.heatmap_cache.get((method, name))
        if drawn is None:
            drawn = self.heatmap_cache[(method, name)] = heatmap.on_source_grid()
            drawn.setflags(write=False)
        return drawn

    @property
    def ranked(self) -> list[Finding]:
        """The findings, highest probability first (model order among equals)."""
        return sorted(self.findings, key=lambda finding: finding.probability, reverse=True)

    @property
    def present(self) -> list[Finding]:
        """The present findings, highest probability first."""
        return [finding for finding in self.ranked if finding.present]

    def finding(self, name: str) -> Finding:
        """Return the finding called `name`."""
        for finding in self.findings:
            if finding.name == name:
                return finding
        raise KeyError(name)


def _check_unit_image(attribute: str, array: np.ndarray, grid: tuple[int, int], uid: str) -> None:
    _check_grid(attribute, array, grid, uid)
    _check_unit_values(attribute, array, uid)


def _check_grid(attribute: str, array: np.ndarray, grid: tuple[int, int], uid: str) -> None:
    if not isinstance(array, np.ndarray) or array.shape != grid:
        shape = getattr(array, "shape", type(array).__name__)
        raise ResultInputError(
            f"ImageResult.{attribute} of {uid} has shape {shape}, expected the source grid {grid}"
        )


def _check_unit_values(attribute: str, array: np.ndarray, uid: str) -> None:
    # A hair of float32 rounding outside [0, 1] is tolerated; the writers clip.
    if not np.all(np.isfinite(array)) or array.min() < -1e-6 or array.max() > 1.0 + 1e-6:
        raise ResultInputError(f"ImageResult.{attribute} of {uid} has values outside [0, 1]")
