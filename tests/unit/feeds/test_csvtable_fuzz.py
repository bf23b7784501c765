"""The CSV reader under arbitrary input: it raises nothing but ``CsvFileRejected`` and never
loses a good row. Hypothesis, bounded and derandomized, plus a corpus of inputs that once were
interesting (``tests/fuzz_corpus/csv/``: ``good-<rows>-*.csv`` must yield that many rows)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from node.feeds.csvtable import read_table
from node.feeds.errors import CsvFileRejected

CORPUS = Path(__file__).parents[2] / "fuzz_corpus" / "csv"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure names its input
    database=None,  # and nothing written beside the tests
    suppress_health_check=[HealthCheck.too_slow],
)

# Report text as people write it: any printable character, tabs and line breaks; no C0 control
# characters (the reader rejects those as binary) and no lone surrogates (not encodable).
TEXT = st.text(
    st.one_of(
        st.characters(blacklist_categories=("Cs", "Cc")),
        st.sampled_from(["\t", "\n", "\r", '"', ",", ";"]),
    ),
    min_size=1,
    max_size=60,
).filter(str.strip)
ROW = st.tuples(TEXT, TEXT, TEXT)  # accession, patient_id, report


def read_or_reject(data: bytes):
    """The reader's answer: a table, or its documented rejection (anything else fails)."""
    try:
        return read_table(data)
    except CsvFileRejected as exc:
        assert str(exc), "a rejection says why"
        return None


@FUZZ
@given(st.binary(max_size=600))
@example(b"\xef\xbb\xbf")
@example(b'accession,patient_id,report\nA,P,"')
def test_arbitrary_bytes_give_a_table_or_a_rejection(data):
    read_or_reject(data)


@FUZZ
@given(st.text(max_size=300), st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16"]))
def test_arbitrary_text_gives_a_table_or_a_rejection(text, encoding):
    read_or_reject(("accession,patient_id,report\n" + text).encode(encoding, "replace"))


@FUZZ
@given(
    rows=st.lists(ROW, min_size=1, max_size=8),
    delimiter=st.sampled_from([",", ";", "\t"]),
    line_end=st.sampled_from(["\n", "\r\n", "\r"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
)
@example(  # CR line ends: the delimiter was counted over the whole file, not the header
    rows=[("A1", "P1", "a; b; c; d; e; f")],
    delimiter=",",
    line_end="\r",
    encoding="utf-8",
    quoting=csv.QUOTE_MINIMAL,
)
def test_every_good_row_is_read_back_whole(rows, delimiter, line_end, encoding, quoting):
    if quoting == csv.QUOTE_MINIMAL:
        # Python's writer quotes a cell holding a line break only if it is of the line end's
        # characters: one with a bare CR (or LF in a CR file) is malformed, its break any
        # reader's line end.
        bare = "\r\n" if line_end == "\r" else "\r"
        assume(not any(c in cell for row in rows for cell in row for c in bare))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=line_end, quoting=quoting)
    writer.writerow(["accession", "patient_id", "report"])
    writer.writerows(rows)
    try:
        data = out.getvalue().encode(encoding)
    except UnicodeEncodeError:
        assume(False)  # Windows-1252 cannot write that text: not a file a site could export
    if encoding == "cp1252":
        # Bytes that are also valid UTF-8 are read as UTF-8, as the reader documents.
        assume(not _decodes_as_utf8(data) or data.isascii())

    table = read_table(data)

    def as_read(value: str) -> str:
        return value.replace("\r\n", "\n").replace("\r", "\n")

    expected = [{"accession": a, "patient_id": p, "text": r} for a, p, r in rows]
    assert [row.cells for row in table.rows] == [
        {key: as_read(value) for key, value in row.items()} for row in expected
    ]
    assert table.delimiter == delimiter and all(row.extra == [] for row in table.rows)


def _decodes_as_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.csv")), ids=lambda p: p.name)
def test_corpus_inputs_give_a_table_or_a_rejection(path):
    table = read_or_reject(path.read_bytes())
    if path.name.startswith("good-"):
        expected_rows = int(path.name.split("-")[1])
        assert table is not None and len(table.rows) == expected_rows
