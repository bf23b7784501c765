"""Report sections (FINDINGS, IMPRESSION...) found in report text as it arrives.

Two signals, the stronger first: a heading written in the text (``FINDINGS:``, ``Impression:``)
and, for HL7, how the sender labelled the OBX that carries a line (WashU-style ``&GDT`` /
``&IMP`` / ``&TCM`` suffixes, LOINC or DICOM section codes). The text itself is never changed:
sections are copies of its parts, stored with the report and handed to the model as they are.
The heading table and the splitter are the model's own (:mod:`models.sections`), so that what
the feed stores and what the model would find in the text agree; this module adds what only a
feed knows, the section an HL7 observation is labelled with.
"""

from __future__ import annotations

from collections.abc import Iterable

from models.sections import (
    ADDENDUM,
    COMPARISON,
    EXAMINATION,
    FINDINGS,
    IMPRESSION,
    INDICATION,
    TECHNIQUE,
    section_name,
)
from models.sections import split_sections as detect_sections

__all__ = [
    "ADDENDUM",
    "COMPARISON",
    "EXAMINATION",
    "FINDINGS",
    "IMPRESSION",
    "INDICATION",
    "TECHNIQUE",
    "detect_sections",
    "section_for_observation",
]

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


def section_for_observation(identifiers: Iterable[str]) -> str | None:
    """Return the section an OBX-3 (its components and subcomponents) names, if any."""
    for value in identifiers:
        section = _OBSERVATION_CODES.get(value.strip().upper()) or section_name(value)
        if section is not None:
            return section
    return None
