"""Characters of an HL7 v2 message: MSH-18 character sets, segment terminators, escapes.

HL7 v2 defaults to ASCII, names other character sets in MSH-18 (table 0211) and writes
delimiters inside values as escape sequences (``\\F\\``, ``\\S\\``...). Formatted text (FT)
adds formatting commands (``\\.br\\``, ``\\.sp\\``...). Everything here turns received bytes
into the text a reader would see. Bytes that are not valid in the declared character set
make the message an error rather than text with replacement characters. Where the
declaration is missing or evidently wrong (no MSH-18; UTF-8 bytes declared as 8859/1 or
ASCII) the bytes are decoded as what they are, UTF-8 then Windows-1252, with a note saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from models.hl7_escapes import decode_hl7_escapes

BOM = b"\xef\xbb\xbf"

# HL7 table 0211 (alternate character sets) to Python codecs. Values outside this table are
# refused rather than guessed: a wrong guess silently changes report text.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "ISO IR101": "iso8859-2",
    "8859/3": "iso8859-3",
    "ISO IR109": "iso8859-3",
    "8859/4": "iso8859-4",
    "ISO IR110": "iso8859-4",
    "8859/5": "iso8859-5",
    "ISO IR144": "iso8859-5",
    "8859/6": "iso8859-6",
    "ISO IR127": "iso8859-6",
    "8859/7": "iso8859-7",
    "ISO IR126": "iso8859-7",
    "8859/8": "iso8859-8",
    "ISO IR138": "iso8859-8",
    "8859/9": "iso8859-9",
    "ISO IR148": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",  # not in table 0211, but what several RIS vendors send
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "JAS2020": "iso2022_jp",
    "JIS X 0202": "iso2022_jp",
}

# Declared sets that are single-byte Western: text in them that is also valid multi-byte UTF-8
# is, in practice, UTF-8 mislabelled by the sender (dcm4che's own test orders are an example).
_LATIN_DECLARED = {"ascii", "latin-1"}


@dataclass(frozen=True)
class EncodingChars:
    """The delimiters a message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None  # v2.7+: a fifth MSH-2 character

    @classmethod
    def from_msh(cls, msh: str) -> EncodingChars:
        """Read the delimiters from the text of an MSH segment (``MSH|^~\\&|...``)."""
        field = msh[3]
        declared = msh[4:].split(field, 1)[0]
        defaults = cls()
        chars = [
            declared[i] if len(declared) > i else default
            for i, default in enumerate(
                (defaults.component, defaults.repetition, defaults.escape, defaults.subcomponent)
            )
        ]
        truncation = declared[4] if len(declared) > 4 else None
        return cls(field, *chars, truncation=truncation)

    @property
    def delimiters(self) -> dict[str, str]:
        """Escape letter (``F S T R E``, and ``P`` where MSH-2 names a truncation character) to
        the delimiter it stands for."""
        letters = {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
        }
        return letters | ({"P": self.truncation} if self.truncation else {})


@dataclass(frozen=True)
class DecodedMessage:
    """A message as text, segments separated by ``\\r`` whatever the sender used."""

    text: str
    codec: str  # the Python codec used to decode (and to encode the ACK)
    declared: str  # MSH-18 as sent, "" when absent
    supported: bool  # False when MSH-18 names a character set we do not know
    note: str | None = None  # how decoding departed from the declaration, for the audit log


class UndecodableMessage(ValueError):
    """The bytes are not valid in the character set the message declares (or in any we try)."""


def declared_charset(data: bytes) -> str:
    """Return MSH-18 (its first repetition) from the raw bytes of a message, "" when absent."""
    first_line = re.split(rb"\r\n|\r|\n", data, maxsplit=1)[0].decode("latin-1")
    if len(first_line) < 4:
        return ""
    enc = EncodingChars.from_msh(first_line)
    fields = first_line.split(enc.field)
    # fields[0] is "MSH" and fields[1] is MSH-2, so MSH-n is fields[n - 1].
    if len(fields) < 18:
        return ""
    return fields[17].split(enc.repetition)[0].strip()


def decode_message(data: bytes) -> DecodedMessage:
    """Decode one message's bytes and normalise its segment terminators to CR.

    Parameters
    ----------
    data:
        The message as received (MLLP framing already removed). A UTF-8 byte order mark is
        dropped; CR, LF and CRLF all end a segment.

    Returns
    -------
    DecodedMessage

    Raises
    ------
    UndecodableMessage
        The bytes are not valid in the declared character set; or, with no MSH-18, in UTF-8,
        Windows-1252 nor ISO-8859-1.
    """
    note = None
    has_bom = data.startswith(BOM)
    if has_bom:
        data = data[len(BOM) :]
    declared = declared_charset(data)
    codec = CHARSETS.get(declared.upper()) if declared else None

    if has_bom:
        if codec not in (None, "utf-8", "ascii"):
            note = f"UTF-8 byte order mark overrides MSH-18 {declared!r}"
        text, codec = _strict(data, "utf-8"), "utf-8"
    elif declared and codec is None:
        # Decode only to read the header for the AE; the text is not used.
        text = data.decode("latin-1")
        return DecodedMessage(_segments(text), "latin-1", declared, supported=False)
    elif codec is None:
        text, codec = _first_that_decodes(data, ("utf-8", "cp1252", "latin-1"))
        if codec != "utf-8":
            note = f"no MSH-18 and not UTF-8: decoded as {codec}"
    elif codec in _LATIN_DECLARED and _is_multibyte_utf8(data):
        text, codec = data.decode("utf-8"), "utf-8"
        note = f"MSH-18 says {declared!r} but the bytes are UTF-8"
    elif codec == "ascii" and not data.isascii():
        text, codec = _first_that_decodes(data, ("cp1252", "latin-1"))
        note = f"MSH-18 says ASCII but the bytes are not; decoded as {codec}"
    else:
        text = _strict(data, codec)
    return DecodedMessage(_segments(text), codec, declared, supported=True, note=note)


def _strict(data: bytes, codec: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise UndecodableMessage(
            f"byte 0x{data[exc.start]:02X} at offset {exc.start} is not valid {codec}"
        ) from exc


def _first_that_decodes(data: bytes, codecs: tuple[str, ...]) -> tuple[str, str]:
    for codec in codecs:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            continue
    raise UndecodableMessage(f"not valid in any of {', '.join(codecs)}")  # pragma: no cover


def _is_multibyte_utf8(data: bytes) -> bool:
    if data.isascii():
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _segments(text: str) -> str:
    # The standard ends a segment with CR; files arrive with CRLF or LF. When CRs are present
    # they are the terminators and a lone LF is part of a value (some RIS put line breaks in
    # report text that way). Blank lines between segments are noise from editors and logs.
    if "\r" not in text:
        text = text.replace("\n", "\r")
    lines = [line.lstrip("\n") for line in text.split("\r")]
    return "\r".join(line for line in lines if line.strip())


def unescape(value: str, enc: EncodingChars, codec: str) -> str:
    """Replace HL7 escape sequences in one value by the characters they stand for, with the
    delimiters the message declares: :func:`models.hl7_escapes.decode_hl7_escapes`, the one
    decoding of HL7 escapes (report text is not decoded again after the feed)."""
    return decode_hl7_escapes(value, escape=enc.escape, delimiters=enc.delimiters, codec=codec)


def escape(value: str, enc: EncodingChars) -> str:
    """Write ``value`` so that it survives as one component of one field (for ACK text)."""
    out = value.replace(enc.escape, f"{enc.escape}E{enc.escape}")
    for char, code in (
        (enc.field, "F"),
        (enc.component, "S"),
        (enc.subcomponent, "T"),
        (enc.repetition, "R"),
    ):
        out = out.replace(char, f"{enc.escape}{code}{enc.escape}")
    return re.sub(r"[\r\n]+", " ", out)
