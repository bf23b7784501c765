"""The words every result carries: the review notice, the disclaimer, the series description."""

from __future__ import annotations

from node.results.findings import AlgorithmInfo

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
