"""A dropped CSV file read as a table of reports: encoding, delimiter, header, rows.

What a site exports varies: UTF-8 with or without BOM or Windows-1252 (Excel), comma,
semicolon or tab, column names such as ``AccessionNumber`` or ``accession_number``, the
report as one column or as FINDINGS / IMPRESSION columns. This module accepts those and
refuses the rest with a reason an admin can act on; it never decides what a row means.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from node.feeds.errors import CsvFileRejected
from node.feeds.sections import COMPARISON, FINDINGS, IMPRESSION, INDICATION, TECHNIQUE

# Normalised header name (lower case, letters and digits only) to the field it fills.
COLUMN_ALIASES: dict[str, str] = {
    **dict.fromkeys(
        ("accession", "accessionnumber", "accessionno", "accno", "accnum", "acc"), "accession"
    ),
    **dict.fromkeys(("patientid", "patient", "mrn", "pid", "patientnumber"), "patient_id"),
    **dict.fromkeys(("report", "reporttext", "text", "reportbody", "narrative"), "text"),
    **dict.fromkeys(("studyuid", "studyinstanceuid"), "study_uid"),
    **dict.fromkeys(("status", "reportstatus"), "status"),
    **dict.fromkeys(("time", "datetime", "observedat", "reporttime", "reportdate", "date"), "time"),
    "kind": "kind",
    **dict.fromkeys(("findings", "finding"), FINDINGS),
    **dict.fromkeys(("impression", "impressions", "conclusion"), IMPRESSION),
    **dict.fromkeys(("indication", "clinicalindication", "history", "reasonforstudy"), INDICATION),
    **dict.fromkeys(("comparison", "comparisons"), COMPARISON),
    "technique": TECHNIQUE,
}
SECTION_COLUMNS = (INDICATION, COMPARISON, TECHNIQUE, FINDINGS, IMPRESSION)  # report order
_DELIMITERS = (",", ";", "\t")
# C0 controls other than tab, LF, CR, and DEL: text files do not contain them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class CsvRow:
    """One data row: its line number in the file and its cells by field name."""

    line: int
    cells: dict[str, str]
    extra: list[str] = field(default_factory=list)  # cells beyond the header's columns


@dataclass(frozen=True)
class CsvTable:
    encoding: str
    delimiter: str
    columns: dict[str, str]  # field name -> the header as written
    ignored_columns: list[str]
    rows: list[CsvRow]


def read_table(data: bytes) -> CsvTable:
    """Decode and parse a CSV file's bytes.

    Parameters
    ----------
    data:
        The whole file. UTF-8 (BOM optional) is tried first, then Windows-1252 (ISO-8859-1
        plus the printable characters Windows puts in 0x80-0x9F).

    Returns
    -------
    CsvTable

    Raises
    ------
    CsvFileRejected
        Empty, binary or undecodable; no header with accession, patient id and report text
        columns; two columns meaning the same field; malformed CSV.
    """
    text, encoding = _decode(data)
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = _header_row(reader)
        columns, ignored = _map_header(header)
        rows = list(_rows(reader, header, columns))
    except csv.Error as exc:
        raise CsvFileRejected(f"malformed CSV near line {reader.line_num}: {exc}") from None
    if not rows:
        raise CsvFileRejected("no data rows after the header")
    named = {name: header[i] for name, i in columns.items()}
    return CsvTable(encoding, delimiter, named, ignored, rows)


def _decode(data: bytes) -> tuple[str, str]:
    if not data.strip():
        raise CsvFileRejected("empty file")
    if b"\x00" in data:
        raise CsvFileRejected("binary file (contains NUL bytes), not CSV text")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        control = _CONTROL.search(text)
        if control:
            line = text.count("\n", 0, control.start()) + 1
            raise CsvFileRejected(
                f"control character 0x{ord(control.group()):02X} on line {line}: "
                "a binary file or an unsupported encoding"
            )
        return text, encoding
    raise CsvFileRejected("neither UTF-8 nor Windows-1252/ISO-8859-1 text")


def _delimiter(text: str) -> str:
    # The header line ends at any line end: a file with CR line ends (old Mac exports) is one
    # "line" to a split on LF, whose report text's delimiters would outvote the header's.
    first_line = _LINE_END.split(text.lstrip("\r\n"), maxsplit=1)[0]
    counts = {d: first_line.count(d) for d in _DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _header_row(reader: Any) -> list[str]:
    for row in reader:
        if any(cell.strip() for cell in row):
            return row
    raise CsvFileRejected("no header row")


def _map_header(header: list[str]) -> tuple[dict[str, int], list[str]]:
    columns: dict[str, int] = {}
    ignored: list[str] = []
    for i, name in enumerate(header):
        key = COLUMN_ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))
        if key is None:
            if name.strip():
                ignored.append(name.strip())
            continue
        if key in columns:
            raise CsvFileRejected(
                f"two columns both mean {key}", f"{header[columns[key]]!r} and {name!r}"
            )
        columns[key] = i
    missing = [k for k in ("accession", "patient_id") if k not in columns]
    if "text" not in columns and not any(s in columns for s in SECTION_COLUMNS):
        missing.append("report text (report, text, or findings/impression)")
    if missing:
        shown = ", ".join(repr(h) for h in header[:12])
        raise CsvFileRejected(f"header has no column for {', '.join(missing)}", f"header: {shown}")
    return columns, ignored


def _rows(reader: Any, header: list[str], columns: dict[str, int]) -> Iterator[CsvRow]:
    while True:
        line = reader.line_num + 1  # where the next record starts
        try:
            row = next(reader)
        except StopIteration:
            return
        if not any(cell.strip() for cell in row):
            continue  # blank lines and all-empty rows that spreadsheets leave at the end
        cells = {
            name: row[i].replace("\r\n", "\n").replace("\r", "\n") if i < len(row) else ""
            for name, i in columns.items()
        }
        yield CsvRow(line, cells, [c for c in row[len(header) :] if c.strip()])
