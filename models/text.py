"""Report text cleaning, the one route from report text to text-encoder input.

Training and serving both call :func:`clean_report_text` with the options a package records
(:class:`TextCleaning`), so a model never reads text prepared differently from what it learned
on. The steps, in order:

1. HL7 v2 escape sequences (``\\.br\\``, ``\\X0D\\``, ``\\F\\``...) are decoded, line ends
   normalised.
2. Sections: when the text has headings (``FINDINGS:``, ``IMPRESSION:``, ``INDICATION:``...),
   only the requested sections are kept, in the requested order, headings removed. Text
   without any heading is kept whole (a bare indication or a one-line report). Text whose
   headings name none of the requested sections gives ``None``: there is nothing in it of what
   the model was trained on.
3. De-identification tokens: runs of upper-case ``X`` (Open-i/IU X-ray writes ``XXXX`` for every
   removed word) become the single token ``xxxx``, and consecutive ones merge into one.
   ``xxxx`` is kept rather than a bracketed token because BERT-family tokenizers split ``[deid]``
   into four word pieces and ``xxxx`` into two, and because it is what the public training
   reports contain.
4. Lower-casing (optional: cased encoders such as BioBERT v1.1 may want the case).
5. Label-word masking (seed 000's leakage guard): each listed word or phrase is removed where it
   stands as a whole word, case-insensitively, so a report cannot hand its label to the model.
6. Whitespace collapsed; text with no letter or digit left becomes ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FINDINGS = "findings"
IMPRESSION = "impression"
INDICATION = "indication"
COMPARISON = "comparison"
TECHNIQUE = "technique"
EXAMINATION = "examination"
SECTIONS = (FINDINGS, IMPRESSION, INDICATION, COMPARISON, TECHNIQUE, EXAMINATION)
DEFAULT_SECTIONS = (FINDINGS, IMPRESSION)
DEID_TOKEN = "xxxx"

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
    "CLINICAL HISTORY": INDICATION,
    "HISTORY": INDICATION,
    "REASON FOR EXAM": INDICATION,
    "REASON FOR EXAMINATION": INDICATION,
    "COMPARISON": COMPARISON,
    "COMPARISONS": COMPARISON,
    "TECHNIQUE": TECHNIQUE,
    "EXAMINATION": EXAMINATION,
    "EXAM": EXAMINATION,
    "PROCEDURE": EXAMINATION,
}
_PHRASES = "|".join(
    re.escape(p).replace(r"\ ", r"\s+") for p in sorted(_HEADINGS, key=len, reverse=True)
)
# A heading at the start of a line may be in any case; within a line only upper-case headings
# count, so that prose such as "no acute findings: stable" is not split.
_LINE_HEADING = re.compile(rf"^[ \t]*(?P<h>{_PHRASES})[ \t]*:", re.IGNORECASE | re.MULTILINE)
_INLINE_HEADING = re.compile(rf"(?<![A-Za-z])(?P<h>{_PHRASES})[ \t]*:")

# HL7 v2 escapes (v2.5 section 2.7): delimiters and the formatting commands of FT fields.
_HL7_ESCAPES = {
    "F": "|",
    "S": "^",
    "T": "&",
    "R": "~",
    "E": "\\",
    ".br": "\n",
    ".sp": "\n",
    "X0D": "\n",
    "X0A": "\n",
    "X0D0A": "\n",
}
_HL7_ESCAPE = re.compile(
    r"\\(\.br|\.sp\d*|\.in[+-]?\d*|\.ti[+-]?\d*|\.ce|\.fi|\.nf|\.sk\d*|"
    r"X[0-9A-Fa-f]+|[FSTREHN])\\"
)
_DEID_RUN = re.compile(r"X{3,}")
_DEID_REPEATS = re.compile(rf"\b{DEID_TOKEN}(?:[\s,;]+{DEID_TOKEN}\b)+", re.IGNORECASE)
_HAS_CONTENT = re.compile(r"[A-Za-z0-9]")


@dataclass(frozen=True)
class TextCleaning:
    """The text-cleaning options a model package records and both training and serving use.

    Parameters
    ----------
    sections : tuple of str
        Sections to keep, in this order, from text that has headings; empty keeps all text.
        Each one of :data:`SECTIONS`.
    mask_words : tuple of str
        Words or phrases removed as whole words (seed 000's label-leakage masking); an
        underscore matches a space (``"Pleural_Thickening"``).
    lowercase : bool
        Lower-case the text.
    """

    sections: tuple[str, ...] = DEFAULT_SECTIONS
    mask_words: tuple[str, ...] = field(default=())
    lowercase: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "sections", tuple(str(s).lower() for s in self.sections))
        object.__setattr__(self, "mask_words", tuple(str(w) for w in self.mask_words))
        unknown = [name for name in self.sections if name not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown report sections {unknown}; known: {list(SECTIONS)}")
        if any(not word.strip() for word in self.mask_words):
            raise ValueError("mask_words must not contain empty words")

    def __call__(self, text: str | None) -> str | None:
        """Clean one report with these options; see :func:`clean_report_text`."""
        return clean_report_text(
            text, mask_label_words=self.mask_words, sections=self.sections, lowercase=self.lowercase
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the options as plain JSON-ready values."""
        return {
            "sections": list(self.sections),
            "mask_words": list(self.mask_words),
            "lowercase": self.lowercase,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextCleaning:
        """Build options from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If a key is unknown or a value is invalid.
        """
        unknown = set(data) - {"sections", "mask_words", "lowercase"}
        if unknown:
            raise ValueError(f"unknown text cleaning keys: {sorted(unknown)}")
        lowercase = data.get("lowercase", True)
        if not isinstance(lowercase, bool):
            raise ValueError(f"text cleaning 'lowercase' must be true or false, not {lowercase!r}")
        return cls(
            sections=tuple(data.get("sections", DEFAULT_SECTIONS)),
            mask_words=tuple(data.get("mask_words", ())),
            lowercase=lowercase,
        )


def clean_report_text(
    text: str | None,
    *,
    mask_label_words: Sequence[str] | None = None,
    sections: Sequence[str] = DEFAULT_SECTIONS,
    lowercase: bool = True,
) -> str | None:
    """Turn report text as received into text-encoder input (see the module docstring).

    Parameters
    ----------
    text : str or None
        Report text as received (HL7 escapes and headings allowed).
    mask_label_words : sequence of str, optional
        Words or phrases to remove as whole words, case-insensitively.
    sections : sequence of str
        Sections to keep from text with headings, in this order; empty keeps the whole text.
    lowercase : bool
        Lower-case the result.

    Returns
    -------
    str or None
        The cleaned text, or ``None`` when nothing usable is left.
    """
    if text is None:
        return None
    body = _unescape_hl7(text).replace("\r\n", "\n").replace("\r", "\n")
    if sections:
        selected = _select_sections(body, tuple(s.lower() for s in sections))
        if selected is None:
            return None
        body = selected
    body = _DEID_RUN.sub(DEID_TOKEN, body)
    body = _DEID_REPEATS.sub(DEID_TOKEN, body)
    if lowercase:
        body = body.lower()
    if mask_label_words:
        body = _mask(body, mask_label_words)
    cleaned = " ".join(body.split())
    return cleaned if _HAS_CONTENT.search(cleaned) else None


def extract_sections(text: str) -> dict[str, str]:
    """Split report text at its headings.

    Parameters
    ----------
    text : str
        Report text; headings such as ``FINDINGS:`` open sections.

    Returns
    -------
    dict
        Section name (one of :data:`SECTIONS`) to its text, headings removed; a repeated
        heading's texts are joined. Text before the first heading belongs to no section. Empty
        when the text has no heading.
    """
    marks = sorted(
        {(m.start("h"), m.end(), _HEADINGS[_heading_key(m["h"])]) for m in _headings(text)}
    )
    collected: dict[str, list[str]] = {}
    for i, (_, end, name) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        part = text[end:stop].strip()
        if part:
            collected.setdefault(name, []).append(part)
    return {name: "\n".join(parts) for name, parts in collected.items()}


def compose_report(sections: Mapping[str, str | None]) -> str:
    """Write separately stored sections (IU X-ray's CSV columns) as one headed report.

    Training data that keeps findings and impression apart goes through this and then
    :func:`clean_report_text`, exactly as a headed report from a feed does.

    Parameters
    ----------
    sections : mapping
        Section name (one of :data:`SECTIONS`) to its text; ``None`` or blank entries are left
        out.

    Returns
    -------
    str
        ``"FINDINGS: ...\\nIMPRESSION: ..."`` in the mapping's order.
    """
    unknown = [name for name in sections if name.lower() not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; known: {list(SECTIONS)}")
    return "\n".join(
        f"{name.upper()}: {value.strip()}"
        for name, value in sections.items()
        if value is not None and value.strip()
    )


def label_mask_words(label_names: Iterable[str], extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Return the words seed 000 masks for a label set: each label name plus ``extra`` words.

    Parameters
    ----------
    label_names : iterable of str
        Label names (``"Pleural_Thickening"`` becomes ``"pleural thickening"``).
    extra : iterable of str
        More words, e.g. ``("normal", "abnormal")`` for a normal/abnormal model.

    Returns
    -------
    tuple of str
        Lower-case words and phrases without duplicates, in first-seen order.
    """
    words = [name.replace("_", " ").strip().lower() for name in (*label_names, *extra)]
    return tuple(dict.fromkeys(word for word in words if word))


def _unescape_hl7(text: str) -> str:
    if "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in _HL7_ESCAPES:
            return _HL7_ESCAPES[code]
        if code.startswith((".sp", ".sk")):
            return "\n"
        return " "  # highlighting and indentation carry no words

    return _HL7_ESCAPE.sub(replace, text)


def _headings(text: str) -> Iterable[re.Match[str]]:
    yield from _LINE_HEADING.finditer(text)
    for match in _INLINE_HEADING.finditer(text):
        if match["h"].isupper():
            yield match


def _heading_key(heading: str) -> str:
    return " ".join(heading.upper().split())


def _select_sections(text: str, wanted: tuple[str, ...]) -> str | None:
    found = extract_sections(text)
    if not found and not any(True for _ in _headings(text)):
        return text  # no headings at all: the whole text is the report
    parts = [found[name] for name in wanted if name in found]
    return "\n".join(parts) if parts else None


def _mask(text: str, words: Sequence[str]) -> str:
    phrases = sorted({w.replace("_", " ").strip().lower() for w in words}, key=len, reverse=True)
    pattern = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in phrases if p)
    if not pattern:
        return text
    return re.sub(rf"(?<![A-Za-z0-9])(?:{pattern})(?![A-Za-z0-9])", " ", text, flags=re.IGNORECASE)
