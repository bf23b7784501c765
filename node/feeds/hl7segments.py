"""An HL7 v2 message split into segments, fields, repetitions and components.

Values are addressed the way interface specifications write them (``OBR-3``, ``PID-3.1``)
and come back unescaped. Splitting happens before unescaping, so an escaped delimiter
(``\\S\\``) inside a value never splits it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.feeds.errors import HL7ParseError
from node.feeds.hl7codec import DecodedMessage, EncodingChars, unescape

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_LOCATION = re.compile(
    r"^(?P<segment>[A-Z][A-Z0-9]{2})-(?P<field>\d{1,3})(?:\.(?P<component>\d{1,2}))?$"
)
_HEADER_SEGMENTS = ("MSH", "BHS", "FHS")


@dataclass(frozen=True)
class Location:
    """A field address such as ``OBR-3`` or ``PID-3.1`` (component 1 when not written)."""

    segment: str
    field: int
    component: int = 1

    @classmethod
    def parse(cls, text: str) -> Location:
        """Parse ``SEG-n`` or ``SEG-n.c``.

        Raises
        ------
        ValueError
            ``text`` is not of that form.
        """
        match = _LOCATION.match(text.strip().upper())
        if not match:
            raise ValueError(f"{text!r} is not a field location like 'OBR-3' or 'PID-3.1'")
        return cls(match["segment"], int(match["field"]), int(match["component"] or 1))

    def __str__(self) -> str:
        return f"{self.segment}-{self.field}"


class Segment:
    """One segment; ``fields[n]`` is field n (for MSH, ``fields[1]`` is the field separator)."""

    __slots__ = ("text", "name", "fields")

    def __init__(self, text: str, enc: EncodingChars) -> None:
        self.text = text
        parts = text.split(enc.field)
        self.name = parts[0]
        # MSH-1 is the separator itself, so MSH's fields are shifted by one.
        self.fields = [parts[0], enc.field, *parts[1:]] if self.name in _HEADER_SEGMENTS else parts

    def raw(self, field: int) -> str:
        """The field as sent (delimiters and escapes intact), "" when absent."""
        return self.fields[field] if 0 < field < len(self.fields) else ""


class HL7Structure:
    """The segments of one decoded message.

    Raises
    ------
    HL7ParseError
        The text does not start with an MSH segment with usable delimiters.
    """

    def __init__(self, decoded: DecodedMessage) -> None:
        text = decoded.text
        if not text.startswith("MSH"):
            raise HL7ParseError("no MSH segment at the start", quoted=f"starts with {text[:20]!r}")
        if len(text) < 8 or text[3].isalnum() or text[3].isspace():
            raise HL7ParseError("MSH segment too short to declare its delimiters")
        self.enc = EncodingChars.from_msh(text)
        delimiters = [self.enc.field, self.enc.component, self.enc.repetition, self.enc.escape]
        if len(set(delimiters + [self.enc.subcomponent])) != 5:
            raise HL7ParseError("MSH-1/MSH-2 delimiters are not distinct", quoted=repr(text[3:8]))
        self.codec = decoded.codec
        self.segments: list[Segment] = []
        for line in text.split("\r"):
            if self.segments and not self._starts_segment(line):
                # A line break inside a value (CR or LF written into report text by the
                # sender) split a segment in two: join it back, keeping the break.
                self.segments[-1] = Segment(f"{self.segments[-1].text}\n{line}", self.enc)
            else:
                self.segments.append(Segment(line, self.enc))

    def _starts_segment(self, line: str) -> bool:
        name = line[:3]
        return bool(_SEGMENT_ID.match(name)) and (len(line) == 3 or line[3] == self.enc.field)

    def index(self, name: str, start: int = 0) -> int | None:
        """Position of the first ``name`` segment at or after ``start``."""
        for i in range(start, len(self.segments)):
            if self.segments[i].name == name:
                return i
        return None

    def first(self, name: str, start: int = 0) -> Segment | None:
        i = self.index(name, start)
        return None if i is None else self.segments[i]

    def all(self, name: str, start: int = 0) -> list[Segment]:
        return [s for s in self.segments[start:] if s.name == name]

    def text(self, raw: str) -> str:
        """Unescape a raw value."""
        return unescape(raw, self.enc, self.codec)

    def repetitions(self, segment: Segment | None, field: int) -> list[str]:
        """The raw repetitions of a field ([] when absent or empty)."""
        if segment is None:
            return []
        raw = segment.raw(field)
        if not raw:
            return []
        if segment.name in _HEADER_SEGMENTS and field == 2:
            return [raw]  # MSH-2 holds the repetition character itself
        return raw.split(self.enc.repetition)

    def components(self, raw_repetition: str) -> list[list[str]]:
        """Split one raw repetition into unescaped components, each a list of subcomponents."""
        return [
            [self.text(sub) for sub in component.split(self.enc.subcomponent)]
            for component in raw_repetition.split(self.enc.component)
        ]

    def value(
        self,
        segment: Segment | None,
        field: int,
        component: int = 1,
        repetition: int = 1,
        subcomponent: int = 1,
    ) -> str:
        """One unescaped, stripped value; "" when any part of the address is absent."""
        reps = self.repetitions(segment, field)
        if len(reps) < repetition:
            return ""
        parts = reps[repetition - 1].split(self.enc.component)
        if len(parts) < component:
            return ""
        subs = parts[component - 1].split(self.enc.subcomponent)
        if len(subs) < subcomponent:
            return ""
        return self.text(subs[subcomponent - 1]).strip()

    def field_text(self, segment: Segment | None, field: int) -> list[str]:
        """Each repetition of a text field (ST/TX/FT) unescaped as a whole.

        Delimiters a sender left unescaped in free text (a stray ``^``) stay literal: in
        narrative fields they are characters the radiologist typed, not structure.
        """
        return [self.text(rep) for rep in self.repetitions(segment, field)]
