"""Report sections (FINDINGS, IMPRESSION...) found in report text.

Two signals, the stronger first: a heading written in the text (``FINDINGS:``, ``Impression:``)
and, for HL7, how the sender labelled the OBX that carries a line (WashU-style ``&GDT`` /
``&IMP`` / ``&TCM`` suffixes, LOINC or DICOM section codes). The text itself is never changed:
sections are copies of its parts, for the consumers that want one part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

FINDINGS = "FINDINGS"
IMPRESSION = "IMPRESSION"
INDICATION = "INDICATION"
COMPARISON = "COMPARISON"
TECHNIQUE = "TECHNIQUE"
EXAMINATION = "EXAMINATION"  # the exam performed ("EXAMINATION: Chest PA and lateral")
ADDENDUM = "ADDENDUM"

# Heading words as radiologists write them, to the section they open.
_HEADINGS = {
    "FINDINGS": FINDINGS,
    "FINDING": FINDINGS,
    "IMPRESSION": IMPRESSION,
    "IMPRESSIONS": IMPRESSION,
    "CONCLUSION": IMPRESSION,
    "CONCLUSIONS": IMPRESSION,
    "INDICATION": INDICATION,
    "INDICATIONS": INDICATION,
    "CLINICAL INDICATION": INDICATION,
    "CLINICAL INDICATIONS": INDICATION,
    "CLINICAL HISTORY": INDICATION,
    "CLINICAL INFORMATION": INDICATION,
    "HISTORY": INDICATION,
    "REASON FOR EXAM": INDICATION,
    "REASON FOR EXAMINATION": INDICATION,
    "REASON FOR STUDY": INDICATION,
    "COMPARISON": COMPARISON,
    "COMPARISONS": COMPARISON,
    "TECHNIQUE": TECHNIQUE,
    "EXAMINATION": EXAMINATION,
    "EXAM": EXAMINATION,
    "PROCEDURE": EXAMINATION,
    "ADDENDUM": ADDENDUM,
}

# OBX-3 codes that say which section an observation holds. WashU's RIS suffixes OBX-3 with
# GDT (general description text), IMP (impression), TCM (technologist comment), ADT/ADN
# (addendum); LOINC and DICOM (PS3.16 CID 7001) name diagnostic-imaging report sections.
_OBSERVATION_CODES = {
    "GDT": FINDINGS,
    "IMP": IMPRESSION,
    "TCM": TECHNIQUE,
    "ADT": ADDENDUM,
    "ADN": ADDENDUM,
    "18782-3": FINDINGS,  # LOINC Radiology Study observation (narrative)
    "59776-5": FINDINGS,  # LOINC Procedure findings
    "19005-8": IMPRESSION,  # LOINC Radiology Impression (narrative)
    "18785-6": INDICATION,  # LOINC Radiology Reason for study (narrative)
    "18834-2": COMPARISON,  # LOINC Radiology Comparison study (narrative)
    "55111-9": TECHNIQUE,  # LOINC Current imaging procedure descriptions
    "121070": FINDINGS,  # DCM Findings
    "121072": IMPRESSION,  # DCM Impressions
    "121109": INDICATION,  # DCM Indications for Procedure
    "121064": TECHNIQUE,  # DCM Current Procedure Descriptions
}

_PHRASES = "|".join(
    re.escape(p).replace(r"\ ", r"\s+") for p in sorted(_HEADINGS, key=len, reverse=True)
)
_AT_LINE_START = re.compile(rf"^\s*(?P<h>{_PHRASES})\s*:", re.IGNORECASE)
# Within a line only upper-case headings count: "no acute findings: ..." is prose.
_INLINE = re.compile(rf"(?<![A-Za-z])(?P<h>{_PHRASES})\s*:")
_ALONE = re.compile(rf"^\s*(?P<h>{_PHRASES})\s*$")


def section_for_observation(identifiers: Iterable[str]) -> str | None:
    """Return the section an OBX-3 (its components and subcomponents) names, if any."""
    for value in identifiers:
        key = value.strip().upper()
        if key in _OBSERVATION_CODES:
            return _OBSERVATION_CODES[key]
        if key in _HEADINGS:
            return _HEADINGS[key]
    return None


def detect_sections(lines: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """Split report lines into sections.

    Parameters
    ----------
    lines:
        ``(line, hint)`` pairs in report order; ``hint`` is the section the line's carrier
        names (``section_for_observation``), or None. A change of hint opens that section;
        a heading in the text overrides it until the next one.

    Returns
    -------
    dict
        Section name to its text (heading removed, blank edges stripped); text before the first
        section (signatures, banners) belongs to none. Repeated headings are concatenated.
    """
    collected: dict[str, list[str]] = {}
    current: str | None = None
    last_hint: str | None = None
    for line, hint in lines:
        if hint != last_hint:
            last_hint = hint
            if hint is not None:
                current = hint
        for section, text in _split_at_headings(line):
            if section is not None:
                current = section
                if not text.strip():
                    continue  # a heading alone on its line adds no line to the section
            if current is not None:
                collected.setdefault(current, []).append(text)
    sections = {name: "\n".join(parts).strip() for name, parts in collected.items()}
    return {name: text for name, text in sections.items() if text}


def _split_at_headings(line: str) -> list[tuple[str | None, str]]:
    alone = _ALONE.match(line)
    if alone and alone["h"].isupper():
        return [(_section(alone["h"]), "")]
    pieces: list[tuple[str | None, str]] = []
    section: str | None = None
    pos = 0
    start = _AT_LINE_START.match(line)
    if start:
        section, pos = _section(start["h"]), start.end()
    for match in _INLINE.finditer(line, pos):
        pieces.append((section, line[pos : match.start()].strip() if section else line[pos:]))
        section, pos = _section(match["h"]), match.end()
    pieces.append((section, line[pos:].strip() if section else line[pos:]))
    return pieces


def _section(heading: str) -> str:
    return _HEADINGS[" ".join(heading.split()).upper()]
