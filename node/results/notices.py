"""The words every result carries: the review notice, the disclaimer, the series description."""

from __future__ import annotations

from collections.abc import Sequence

from node.results.findings import AlgorithmInfo, ImageResult

REVIEW_NOTICE = "AI result — requires review by a radiologist"
REVIEW_REQUIRED = "requires review"

# What each result series is, first in its Series Description so that a PACS or viewer series
# list tells them apart even when the rest is cut off.
SERIES_KINDS = {
    "sr": "AI findings (SR)",
    "gsps": "AI outlines (GSPS)",
    "sc": "AI heatmap overview",
    "finding_sc": "AI heatmap per finding",
    "ig_sc": "AI integrated gradients per finding",
}
# A model name shortened below this many characters says nothing; it is left out instead.
_MIN_NAME = 8

# Series Description is LO: at most 64 characters. Plain ASCII there, because PACS series
# lists are where a mangled UTF-8 dash would be seen most.
_LO_MAX = 64

TEXT_SOURCES = {
    "report": "the radiology report text",
    "indication": "the indication for the examination",
    "none": "no clinical text (image only)",
}


def notices(algorithm: AlgorithmInfo) -> tuple[str, ...]:
    """Statements every output must show: the review notice, then any disclaimer.

    Parameters
    ----------
    algorithm : AlgorithmInfo
        The model that produced the result.

    Returns
    -------
    tuple of str
        The review notice, followed by the disclaimer when the model is not trained.
    """
    if algorithm.trained:
        return (REVIEW_NOTICE,)
    return (REVIEW_NOTICE, algorithm.disclaimer)


def series_description(algorithm: AlgorithmInfo, kind: str) -> str:
    """Series Description saying what the series is, which AI made it, and that it needs review.

    E.g. "AI findings (SR) - cxr-densenet 2.3.1 - requires review". What the series is and
    the review warning are always kept; to fit 64 characters the version goes first, then the
    name is shortened, then left out (it is in the Manufacturer's Model Name too). Untrained
    models are marked ``UNTRAINED``.

    Parameters
    ----------
    algorithm : AlgorithmInfo
        The model that produced the result.
    kind : {"sr", "gsps", "sc", "finding_sc", "ig_sc"}
        The result series: the SR, the presentation state, the overview captures, the
        per-finding captures or their Integrated Gradients counterparts.

    Returns
    -------
    str
        At most 64 ASCII characters.

    Raises
    ------
    ValueError
        If `kind` is not one of the result series.
    """
    if kind not in SERIES_KINDS:
        raise ValueError(f"series kind {kind!r} is not one of {sorted(SERIES_KINDS)}")
    what = SERIES_KINDS[kind] if algorithm.trained else f"UNTRAINED {SERIES_KINDS[kind]}"
    tail = f" - {REVIEW_REQUIRED}"
    for model in (f"{algorithm.name} {algorithm.version}", algorithm.name):
        text = f"{what} - {model}{tail}"
        if len(text) <= _LO_MAX:
            return text
    room = _LO_MAX - len(what) - len(tail) - len(" - ...")
    if room >= _MIN_NAME:
        return f"{what} - {algorithm.name[:room]}...{tail}"
    return what + tail


def summary(images: Sequence[ImageResult]) -> tuple[bool, str]:
    """The report's summary finding: abnormal or not, and the highest probability, in words.

    Parameters
    ----------
    images : sequence of ImageResult
        The processed images of one study, numbered from 1 in this order.

    Returns
    -------
    tuple of (bool, str)
        Whether any finding is present on any image, and a sentence saying so.
    """
    ranked = sorted(
        (
            (finding.probability, number, finding)
            for number, image in enumerate(images, start=1)
            for finding in image.findings
        ),
        key=lambda entry: (-entry[0], entry[1]),
    )
    probability, number, top = ranked[0]
    present = list(dict.fromkeys(finding.name for _, _, finding in ranked if finding.present))
    where = f" (image {number})" if len(images) > 1 else ""
    if present:
        return True, (
            f"Summary: abnormal. Highest probability: {top.name} {probability:.2f}{where}. "
            f"Present: {', '.join(present)}."
        )
    return False, (
        f"Summary: no finding at or above its threshold. Highest probability: {top.name} "
        f"{probability:.2f}{where}."
    )
