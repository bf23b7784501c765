"""Report text cleaning, the one route from report text to text-encoder input.

Training and serving both call :func:`clean_report_text` with the options a package records
(:class:`TextCleaning`), so a model never reads text prepared differently from what it learned
on. It takes text as a reader sees it: HL7 escape sequences are decoded once, where the text is
read (the HL7 codec, the CSV feed, the dataset readers: :mod:`models.hl7_escapes`), never here.
The steps, in order:

1. Line ends normalised.
2. Sections: the requested sections are kept, in the requested order, headings removed. A
   :class:`ReportText` brings the sections the feed found and stored; they are selected from,
   not found again. Text that comes without them (training data, a row stored without any) is
   split once, with the feed's own splitter (:mod:`models.sections`). Text without any heading
   is kept whole (a bare indication or a one-line report), and so are sections that are the
   whole text (a feed that labelled an order's text as its indication). An ADDENDUM is read
   after the impression it amends. Text whose sections include none of the requested ones
   gives ``None``: there is nothing in it of what the model was trained on.
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

from models.sections import (
    ADDENDUM,
    FINDINGS,
    IMPRESSION,
    SECTIONS,
    extract_sections,
    has_headings,
    section_name,
)

DEFAULT_SECTIONS = (FINDINGS, IMPRESSION)
DEID_TOKEN = "xxxx"

_DEID_RUN = re.compile(r"X{3,}")
_DEID_REPEATS = re.compile(rf"\b{DEID_TOKEN}(?:[\s,;]+{DEID_TOKEN}\b)+", re.IGNORECASE)
_HAS_CONTENT = re.compile(r"[A-Za-z0-9]")


@dataclass(frozen=True)
class ReportText:
    """A report as the model is handed it: its text and the sections a feed stored for it.

    Parameters
    ----------
    text : str
        The text as received, HL7 escapes already decoded by the feed.
    sections : mapping of str to str, optional
        Section name to its text, as the feed found and stored them; a name may be in any
        case (databases hold ``"FINDINGS"`` and ``"findings"`` alike) and is read as its
        canonical name (:func:`models.sections.section_name`). ``None`` or empty when none
        were stored: the cleaning then splits the text itself.
    """

    text: str
    sections: Mapping[str, str] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.sections:
            merged: dict[str, list[str]] = {}
            for name, part in self.sections.items():
                merged.setdefault(section_name(name) or name.upper(), []).append(part)
            object.__setattr__(
                self, "sections", {name: "\n".join(parts) for name, parts in merged.items()}
            )
        else:
            object.__setattr__(self, "sections", None)


@dataclass(frozen=True)
class TextCleaning:
    """The text-cleaning options a model package records and both training and serving use.

    Parameters
    ----------
    sections : tuple of str
        Sections to keep, in this order, from text that has headings; empty keeps all text.
        Each one of :data:`SECTIONS`, in any case (packages written before the names were
        upper case say ``"findings"``).
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
        object.__setattr__(self, "sections", tuple(str(s).upper() for s in self.sections))
        object.__setattr__(self, "mask_words", tuple(str(w) for w in self.mask_words))
        unknown = [name for name in self.sections if name not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown report sections {unknown}; known: {list(SECTIONS)}")
        if any(not word.strip() for word in self.mask_words):
            raise ValueError("mask_words must not contain empty words")

    def __call__(self, text: ReportText | str | None) -> str | None:
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
    text: ReportText | str | None,
    *,
    mask_label_words: Sequence[str] | None = None,
    sections: Sequence[str] = DEFAULT_SECTIONS,
    lowercase: bool = True,
) -> str | None:
    """Turn report text as received into text-encoder input (see the module docstring).

    Parameters
    ----------
    text : ReportText, str or None
        Report text as received (HL7 escapes decoded, headings allowed), with the sections
        its feed stored (:class:`ReportText`) or without (a plain ``str``: split here).
    mask_label_words : sequence of str, optional
        Words or phrases to remove as whole words, case-insensitively.
    sections : sequence of str
        Sections to keep from text with headings, in this order (names in any case); empty
        keeps the whole text.
    lowercase : bool
        Lower-case the result.

    Returns
    -------
    str or None
        The cleaned text, or ``None`` when nothing usable is left.
    """
    if text is None:
        return None
    report = text if isinstance(text, ReportText) else ReportText(text)
    body = report.text.replace("\r\n", "\n").replace("\r", "\n")
    if sections:
        selected = _select_sections(body, report.sections, tuple(s.upper() for s in sections))
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
    unknown = [name for name in sections if name.upper() not in SECTIONS]
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


def _select_sections(
    text: str, stored: Mapping[str, str] | None, wanted: tuple[str, ...]
) -> str | None:
    if stored:
        if len(stored) == 1 and next(iter(stored.values())).strip() == text.strip():
            return text  # one part that is the whole text: the feed labelled it, not split it
        found = stored
    else:
        found = extract_sections(text)
        if not found and not has_headings(text):
            return text  # no headings at all: the whole text is the report
    parts = []
    for name in wanted:
        if name in found:
            parts.append(found[name])
        # An addendum amends the impression it follows: read with it unless asked for apart.
        if name == IMPRESSION and name in found and ADDENDUM in found and ADDENDUM not in wanted:
            parts.append(found[ADDENDUM])
    return "\n".join(parts) if parts else None


def _mask(text: str, words: Sequence[str]) -> str:
    phrases = sorted({w.replace("_", " ").strip().lower() for w in words}, key=len, reverse=True)
    pattern = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in phrases if p)
    if not pattern:
        return text
    return re.sub(rf"(?<![A-Za-z0-9])(?:{pattern})(?![A-Za-z0-9])", " ", text, flags=re.IGNORECASE)
