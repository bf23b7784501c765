"""Result writers: the TID 1500 SR per study and run, and per processed image a presentation
state and the Grad-CAM captures (an overview and one per present finding)."""

from node.results.findings import (
    AlgorithmInfo,
    Finding,
    ImageResult,
    ResultInputError,
    model_findings,
)
from node.results.heatmap import GridHeatmap, display_levels
from node.results.overlay import build_finding_capture, build_overview
from node.results.presentation import build_presentation_state
from node.results.region import DEFAULT_REGION_LEVEL, HeatRegion, finding_regions, heat_region
from node.results.sr import build_structured_report

__all__ = [
    "DEFAULT_REGION_LEVEL",
    "AlgorithmInfo",
    "Finding",
    "GridHeatmap",
    "HeatRegion",
    "ImageResult",
    "ResultInputError",
    "build_finding_capture",
    "build_overview",
    "build_presentation_state",
    "build_structured_report",
    "display_levels",
    "finding_regions",
    "heat_region",
    "model_findings",
]
