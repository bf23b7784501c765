"""HL7 v2 escape sequences (v2.5 section 2.7) decoded: the one implementation.

Report text from HL7 writes the delimiters inside values as escapes (``\\F\\``, ``\\S\\``,
``\\T\\``...) and formats FT fields with commands (``\\.br\\``, ``\\.sp\\``...). The HL7 codec
(``node.feeds.hl7codec.unescape``) decodes every value of a message with this function and the
delimiters its MSH declares; text that left an HL7 system without being decoded (a RIS export,
the IU X-ray reports) goes through it where it is read, with the default delimiters. Report
text cleaning (:mod:`models.text`) does not decode again: a backslash that survives is text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ESCAPE = "\\"
# Escape letter to the delimiter it stands for (MSH-1 and MSH-2 as most senders write them).
DEFAULT_DELIMITERS: Mapping[str, str] = {"F": "|", "S": "^", "T": "&", "R": "~", "E": ESCAPE}

_FORMAT_NUMBER = re.compile(r"^\.(sp|sk|in|ti)\s*([+-]?\d+)?$")
# \Cxxyy\ single-byte and \Mxxyyzz\ multi-byte set switches, \Z..\ locally defined escapes.
_CHARSET_SWITCH = re.compile(r"C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{2})?|Z.*")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")


def decode_hl7_escapes(
    value: str,
    *,
    escape: str = ESCAPE,
    delimiters: Mapping[str, str] = DEFAULT_DELIMITERS,
    codec: str = "utf-8",
) -> str:
    """Replace HL7 escape sequences in one value by the characters they stand for.

    Delimiter escapes (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, and ``\\P\\`` where ``delimiters``
    has one) become the delimiter, ``\\Xhh..\\`` the bytes it spells decoded in ``codec``,
    ``\\.br\\`` a line break, ``\\.sp n\\`` n + 1 line breaks, ``\\.sk n\\`` n spaces.
    Highlighting, indentation, fill mode and character-set switches (``\\H\\ \\N\\ \\.in\\
    \\.fi\\ \\Cxxyy\\``...) carry no words and are dropped. An unknown or unterminated sequence
    is left as sent.

    Parameters
    ----------
    value : str
        One field, component or text repetition (already split at the delimiters).
    escape : str
        The escape character (MSH-2's third).
    delimiters : mapping
        Escape letter (``"F"``, ``"S"``, ``"T"``, ``"R"``, ``"E"``, ``"P"``) to the character
        it stands for.
    codec : str
        Python codec of the bytes ``\\Xhh\\`` spells: the message's character set.

    Returns
    -------
    str
        The value as a reader would see it.
    """
    if escape not in value:
        return value
    out: list[str] = []
    pos = 0
    while True:
        start = value.find(escape, pos)
        end = value.find(escape, start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(value[pos:])
            return "".join(out)
        out.append(value[pos:start])
        sequence = value[start + 1 : end]
        expanded = _expand(sequence, delimiters, codec)
        out.append(value[start : end + 1] if expanded is None else expanded)
        pos = end + 1


def _expand(seq: str, delimiters: Mapping[str, str], codec: str) -> str | None:
    if seq in delimiters:
        return delimiters[seq]
    if seq in ("H", "N", ".fi", ".nf") or _CHARSET_SWITCH.fullmatch(seq):
        return ""
    if seq in (".br", ".ce"):
        return "\n"
    if seq[:1] == "X" and _HEX.fullmatch(seq[1:]):
        return bytes.fromhex(seq[1:]).decode(codec, errors="replace")
    match = _FORMAT_NUMBER.match(seq)
    if match:
        command, number = match[1], abs(int(match[2] or 1))
        if command == "sp":
            return "\n" * (number + 1)
        if command == "sk":
            return " " * number
        return ""  # .in / .ti: indentation only
    return None
