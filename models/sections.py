"""Report sections (FINDINGS, IMPRESSION...): the one heading table and the one splitter.

The feeds split a report when it arrives and store its sections; the model's text cleaning
selects from those, and splits text that arrives without them (training data, older rows)
with the same function, :func:`split_sections`. A heading is a phrase of :data:`HEADINGS`
followed by a colon, in any case at the start of a line and in upper case within one (so that
prose such as "no acute findings: stable" is not split), or alone and in upper case on its
line. Section names are spelt in upper case, as radiologists write the headings;
:func:`section_name` reads any other spelling (a package's ``"findings"``, a database row
written with lower-case keys).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

FINDINGS = "FINDINGS"
IMPRESSION = "IMPRESSION"
INDICATION = "INDICATION"
COMPARISON = "COMPARISON"
TECHNIQUE = "TECHNIQUE"
EXAMINATION = "EXAMINATION"  # the exam performed ("EXAMINATION: Chest PA and lateral")
ADDENDUM = "ADDENDUM"
SECTIONS = (FINDINGS, IMPRESSION, INDICATION, COMPARISON, TECHNIQUE, EXAMINATION, ADDENDUM)

# Heading words as radiologists write them, to the section they open.
HEADINGS: Mapping[str, str] = {
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

_PHRASES = "|".join(
    re.escape(p).replace(r"\ ", r"\s+") for p in sorted(HEADINGS, key=len, reverse=True)
)
# Matched within one line: \s cannot reach into the next.
_AT_LINE_START = re.compile(rf"^\s*(?P<h>{_PHRASES})\s*:", re.IGNORECASE)
# Case-sensitive: within a line only upper-case headings count.
_INLINE = re.compile(rf"(?<![A-Za-z])(?P<h>{_PHRASES})\s*:")
_ALONE = re.compile(rf"^\s*(?P<h>{_PHRASES})\s*$")


def section_name(name: str) -> str | None:
    """The canonical name of a section written in any case, or as a heading phrase.

    ``"findings"``, ``"Findings"`` and ``"FINDINGS"`` are :data:`FINDINGS`;
    ``"Impressions"`` is :data:`IMPRESSION`. ``None`` for a name no heading means.
    """
    return HEADINGS.get(_heading_key(name))


def split_sections(lines: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """Split report lines into sections.

    Parameters
    ----------
    lines : iterable of (str, str or None)
        ``(line, hint)`` pairs in report order; ``hint`` is the section the line's carrier
        names (an HL7 OBX-3 code), or None. A change of hint opens that section; a heading in
        the text overrides it until the next one.

    Returns
    -------
    dict
        Section name (one of :data:`SECTIONS`) to its text, heading removed, blank edges
        stripped; text before the first section (signatures, banners) belongs to none. A
        repeated section's texts are joined. Empty when no line opens a section.
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


def extract_sections(text: str) -> dict[str, str]:
    """Split report text at its headings: :func:`split_sections` of its lines, no hints."""
    return split_sections((line, None) for line in _lines(text))


def has_headings(text: str) -> bool:
    """Whether any line of ``text`` holds a heading (one with nothing after it included)."""
    return any(
        section is not None for line in _lines(text) for section, _ in _split_at_headings(line)
    )


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _split_at_headings(line: str) -> list[tuple[str | None, str]]:
    """The line's pieces, each with the section its heading opens (None: no heading)."""
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
        before = line[pos : match.start()]
        pieces.append((section, before.strip() if section else before))
        section, pos = _section(match["h"]), match.end()
    pieces.append((section, line[pos:].strip() if section else line[pos:]))
    return pieces


def _section(heading: str) -> str:
    return HEADINGS[_heading_key(heading)]


def _heading_key(words: str) -> str:
    return " ".join(words.split()).upper()
