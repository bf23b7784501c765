"""HL7 escape sequences, character sets and segment terminators."""

from __future__ import annotations

import pytest

from node.feeds.hl7codec import (
    EncodingChars,
    UndecodableMessage,
    decode_message,
    escape,
    unescape,
)

ENC = EncodingChars()


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (r"A \F\ B \S\ C \T\ D \R\ E \E\ F", "A | B ^ C & D ~ E \\ F"),
        (r"line one\.br\line two", "line one\nline two"),
        (r"para\.sp\next", "para\n\nnext"),
        (r"para\.sp 2\next", "para\n\n\nnext"),
        (r"\H\IMPORTANT\N\ result", "IMPORTANT result"),
        (r"\.in +4\\.ti -2\indented\.fi\\.nf\ end", "indented end"),
        (r"a\.sk 3\b", "a   b"),
        (r"\.ce\Centered", "\nCentered"),
        (r"\XC2B1\60%", "±60%"),
        (r"\C2842\switch", "switch"),
        (r"\Zlocal\kept out", "kept out"),
        (r"C:\temp\file", "C:\\temp\\file"),  # an unknown sequence is left as sent
        (r"unterminated \F", "unterminated \\F"),
    ],
)
def test_escape_sequences_decode_to_what_a_reader_sees(raw, text):
    assert unescape(raw, ENC, "utf-8") == text


def test_hex_escape_is_decoded_in_the_message_character_set():
    assert unescape(r"\XB1\60%\XF7\.", ENC, "latin-1") == "±60%÷."


def test_delimiters_declared_in_msh_are_honoured():
    enc = EncodingChars.from_msh("MSH#*$!@#app")
    assert (enc.field, enc.component, enc.repetition, enc.escape, enc.subcomponent) == (
        "#",
        "*",
        "$",
        "!",
        "@",
    )
    assert unescape("a!F!b!S!c", enc, "ascii") == "a#b*c"


def test_escape_round_trips_through_unescape():
    value = "reason: a|b^c&d~e\\f"
    assert unescape(escape(value, ENC), ENC, "ascii") == value


def test_iso_8859_1_declared_in_msh_18_is_used():
    data = "MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5.1||||||8859/1\rOBX|1|TX|||±60%÷".encode(
        "latin-1"
    )
    decoded = decode_message(data)
    assert decoded.codec == "latin-1" and decoded.note is None
    assert decoded.text.endswith("±60%÷")


def test_unicode_utf_8_declared_in_msh_18_is_used():
    data = (
        "MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5.1||||||UNICODE UTF-8\rOBX|1|TX|||Größe µ".encode()
    )
    decoded = decode_message(data)
    assert decoded.codec == "utf-8" and decoded.text.endswith("Größe µ")


def test_bytes_invalid_in_the_declared_character_set_are_refused():
    data = "MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5.1||||||UNICODE UTF-8\rOBX|||±".encode("latin-1")
    with pytest.raises(UndecodableMessage, match="0xB1"):
        decode_message(data)


def test_utf_8_mislabelled_as_8859_1_is_read_as_utf_8_and_noted():
    data = "MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5.1||||||8859/1\rOBX|||12 – 35".encode()
    decoded = decode_message(data)
    assert decoded.text.endswith("12 – 35")
    assert "UTF-8" in decoded.note


def test_without_msh_18_utf_8_is_tried_before_windows_1252():
    assert decode_message("MSH|^~\\&|é".encode()).codec == "utf-8"
    latin = decode_message("MSH|^~\\&|é".encode("latin-1"))
    assert latin.codec == "cp1252" and latin.text.endswith("é") and latin.note


def test_unknown_character_set_is_reported_not_guessed():
    decoded = decode_message(b"MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5.1||||||KLINGON")
    assert not decoded.supported and decoded.declared == "KLINGON"


def test_utf_8_bom_is_dropped():
    decoded = decode_message(b"\xef\xbb\xbfMSH|^~\\&|A\rPID|1")
    assert decoded.text == "MSH|^~\\&|A\rPID|1"


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n", b"\r\n\r\n"])
def test_cr_lf_and_crlf_all_end_segments(terminator):
    data = terminator.join([b"MSH|^~\\&|A", b"PID|1", b"OBX|1|TX|||x"]) + terminator
    assert decode_message(data).text == "MSH|^~\\&|A\rPID|1\rOBX|1|TX|||x"


def test_a_line_feed_inside_a_cr_terminated_message_stays_in_its_value():
    decoded = decode_message(b"MSH|^~\\&|A\rOBX|1|TX|||first\nsecond\r")
    assert decoded.text == "MSH|^~\\&|A\rOBX|1|TX|||first\nsecond"
