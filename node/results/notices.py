"""The words every result carries: the review notice, the disclaimer, the series description."""

from __future__ import annotations

from collections.abc import Sequence

from node.results.findings import AlgorithmInfo, ImageResult

REVIEW_NOTICE = "AI result — requires review by a radiologist"
NOT_FOR_DIAGNOSIS = "not for diagnostic use without review"

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


def series_description(algorithm: AlgorithmInfo) -> str:
    """Series Description naming the AI and saying it is not for diagnosis without review.

    The warning is kept whole; to fit 64 characters the version goes first, then the name
    is shortened. Untrained models are marked ``UNTRAINED``.

    Parameters
    ----------
    algorithm : AlgorithmInfo
        The model that produced the result.

    Returns
    -------
    str
        At most 64 ASCII characters.
    """
    marker = "AI" if algorithm.trained else "UNTRAINED AI"
    tail = f" - {NOT_FOR_DIAGNOSIS}"
    for head in (f"{marker} {algorithm.name} {algorithm.version}", f"{marker} {algorithm.name}"):
        if len(head) + len(tail) <= _LO_MAX:
            return head + tail
    room = _LO_MAX - len(tail) - len(marker) - 1
    return f"{marker} {algorithm.name[: room - 3]}...{tail}"


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
