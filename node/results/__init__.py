"""Result writers: the TID 1500 SR per study and run, and the Grad-CAM overlay per image."""

from node.results.findings import AlgorithmInfo, Finding, ImageResult, ResultInputError
from node.results.overlay import build_overlay
from node.results.sr import build_structured_report

__all__ = [
    "AlgorithmInfo",
    "Finding",
    "ImageResult",
    "ResultInputError",
    "build_overlay",
    "build_structured_report",
]
