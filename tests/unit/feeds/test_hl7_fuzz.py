"""``parse_message`` fuzzed from the public sample messages: whatever the bytes, it returns a
report or raises one of its two documented errors, and the lenient header reader used for
AR echoes never raises.

Inputs that once broke the parser are kept in ``tests/fuzz_corpus/hl7/`` and replayed as plain
tests, so a regression shows up without hypothesis finding it again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import shared_data_dir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from node.feeds.errors import HL7ParseError, HL7Unusable
from node.feeds.hl7message import ParsedReport, parse_message, read_header_leniently

CORPUS = Path(__file__).parents[2] / "fuzz_corpus" / "hl7"
SEED_FOLDERS = ("hl7-dcm4che-testdata", "hl7-fhir-converter-samples")
# Values a sender's interface gets wrong in practice, put in place of a whole field.
ODD_FIELDS = [
    b"20240301101500+2400",
    b"20240301101500-9999",
    b"00010101000000+0100",
    b"99991231235959-0100",
    b"2024022930",
    b"\\X00\\\\Zxx\\",
    b"^^^^^^~~~&&&",
    b"\xff\xfe\x00",
    b"",
]


_TIME = re.compile(rb"(?<=\|)\d{8,14}(?=[|^])")  # a DTM/TS field or component


def _seeds() -> list[bytes]:
    seeds = [path.read_bytes() for path in sorted(CORPUS.glob("*.hl7"))]
    for folder in SEED_FOLDERS:
        seeds += [path.read_bytes() for path in sorted((shared_data_dir() / folder).glob("*.hl7"))]
    return seeds


SEEDS = _seeds()


@st.composite
def mutated_messages(draw) -> bytes:
    """A sample message with a few fields replaced, bytes changed, or a cut."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(("field", "time", "byte", "cut", "insert")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "field":
            bars = [i for i, b in enumerate(data) if b == ord("|")]
            if len(bars) > 1:
                i = draw(st.integers(0, len(bars) - 2))
                value = draw(st.sampled_from(ODD_FIELDS) | st.binary(max_size=24))
                data[bars[i] + 1 : bars[i + 1]] = value
        elif how == "time":
            times = [m.span() for m in _TIME.finditer(data)]
            if times:
                start, end = draw(st.sampled_from(times))
                sign = draw(st.sampled_from(b"+-"))
                data[start:end] = (
                    data[start:end] + bytes([sign]) + b"%04d" % draw(st.integers(0, 9999))
                )
        elif how == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def check_parser_contract(data: bytes) -> None:
    try:
        report = parse_message(data)
    except (HL7ParseError, HL7Unusable):
        report = None
    assert report is None or isinstance(report, ParsedReport)
    read_header_leniently(data)  # what an AR echoes: must not raise either


@pytest.mark.skipif(not SEEDS, reason="no HL7 sample messages")
@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written under the repository; derandomize makes runs repeat
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_messages())
@example(b"MSH|^~\\&|RIS|HOSP|CXR|NODE|20240301101500+2400||ORU^R01|M1|P|2.5.1\r")
def test_parse_message_returns_a_report_or_raises_its_documented_errors(data):
    check_parser_contract(data)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.hl7")), ids=lambda p: p.name)
def test_inputs_that_once_broke_the_parser_are_answered(path):
    check_parser_contract(path.read_bytes())
