"""One HL7 v2 message (ORU report, ORM/OMI order) read into what the node keeps of it.

Which segments say what, per message type:

- keys: the accession number from the first non-empty of a configurable list of fields
  (default OBR-3 filler order number, OBR-2 placer, OBR-18; OBR-2/3 fall back to ORC-2/3,
  the same numbers on the common order segment); the Study Instance UID from IPC-3 (OMI),
  ZDS-1 (IHE) or an OBX coded DICOM Study (113014), the patient from PID-3 (PID-2 in v2.3).
- ORU^R01: the report is every OBX of type TX, FT or ST after the OBR, plus NTE comments,
  in order; status OBR-25 (else OBX-11).
- ORM^O01 / OMI^O23: the indication is OBR-31 reason for study, OBR-13 relevant clinical
  information, ORC-16, NTE comments and TX/FT OBX; status ORC-5 (else ORC-1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from node.feeds.errors import ErrorCode, HL7ParseError, HL7Unusable
from node.feeds.hl7codec import (
    BOM,
    DecodedMessage,
    UndecodableMessage,
    declared_charset,
    decode_message,
)
from node.feeds.hl7header import MessageHeader
from node.feeds.hl7segments import HL7Structure, Location, Segment
from node.feeds.sections import INDICATION, detect_sections, section_for_observation
from node.feeds.values import normalise_status, parse_hl7_datetime
from node.uids import is_uid
from storage.reports import FIELD_LIMITS

DEFAULT_ACCESSION_KEYS = ("OBR-3", "OBR-2", "OBR-18")
SUPPORTED_VERSIONS = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}
)
# Message code to the events accepted (an empty event: old senders write just "ORU").
REPORT_MESSAGES = {"ORU": {"R01", ""}}
ORDER_MESSAGES = {"ORM": {"O01", ""}, "OMI": {"O23", ""}}
TEXT_TYPES = {"TX", "FT", "ST"}
DOCUMENT_TYPES = {"ED", "RP"}  # encapsulated (PDF, CDA) or referenced documents: not read
_DICOM_STUDY = "113014"  # DCM code "DICOM Study" in OBX-3 (IHE RAD ORU)
# The order-group fields that exist on both OBR and ORC with the same meaning.
_ORC_FALLBACK = {2: 2, 3: 3}


@dataclass(frozen=True)
class ParsedReport:
    """A report or an order's indication, as the node stores it."""

    header: MessageHeader
    kind: str  # "report" (ORU) | "indication" (ORM/OMI)
    patient_id: str
    accession: str | None
    study_uid: str | None
    status: str | None
    text: str
    sections: dict[str, str]
    observed_at: datetime | None
    accession_key: str | None = None  # the field the accession came from, e.g. "OBR-3"
    notes: tuple[str, ...] = field(default=())  # what was odd but tolerated, for the audit log

    @property
    def message_id(self) -> str:
        return self.header.message_id

    @property
    def message_type(self) -> str:
        return self.header.message_type

    @property
    def version(self) -> str:
        return self.header.version

    @property
    def sending_application(self) -> str:
        return self.header.sending_application

    @property
    def sending_facility(self) -> str:
        return self.header.sending_facility


def parse_accession_keys(keys: Sequence[str]) -> tuple[Location, ...]:
    """Validate accession key names such as ``("OBR-3", "OBR-2", "OBR-18")``.

    Raises
    ------
    ValueError
        A key is not a field location, or the list is empty.
    """
    if not keys:
        raise ValueError("at least one accession key is needed")
    return tuple(Location.parse(key) for key in keys)


def parse_message(
    data: bytes, accession_keys: Sequence[str] = DEFAULT_ACCESSION_KEYS
) -> ParsedReport:
    """Read one HL7 v2 message.

    Parameters
    ----------
    data:
        The message bytes (no MLLP framing). Character set per MSH-18; a UTF-8 BOM and CR, LF
        or CRLF segment terminators are accepted.
    accession_keys:
        Fields to take the accession number from, first non-empty wins.

    Returns
    -------
    ParsedReport

    Raises
    ------
    HL7ParseError
        Not an HL7 message (empty, no MSH, bytes invalid in the declared character set).
    HL7Unusable
        A message the node cannot use: unsupported type or version, no patient, no accession
        and no study UID, a report without text, a value too long. ``header`` is set.
    """
    keys = parse_accession_keys(accession_keys)
    if not data.strip():
        raise HL7ParseError("empty message")
    try:
        decoded = decode_message(data)
    except UndecodableMessage as exc:
        header = read_header_leniently(data)
        raise HL7ParseError(str(exc), header, ErrorCode.DATA_TYPE) from None
    msg = HL7Structure(decoded)
    header = _header(msg, decoded.declared)
    try:
        if not decoded.supported:
            raise HL7Unusable(
                f"character set {decoded.declared!r} (MSH-18) is not supported",
                "MSH-18",
                ErrorCode.TABLE_VALUE_NOT_FOUND,
            )
        report = _interpret(msg, header, keys)
    except HL7Unusable as exc:
        exc.header = header
        raise
    if decoded.note:
        report = _with_note(report, decoded.note)
    return report


def read_header_leniently(data: bytes) -> MessageHeader | None:
    """The MSH of bytes that failed to parse, read as ISO-8859-1, for the AR; None if absent."""
    data = data.removeprefix(BOM).lstrip()
    first = re.split(rb"\r\n|\r|\n", data, maxsplit=1)[0].decode("latin-1")
    try:
        msg = HL7Structure(DecodedMessage(first, "latin-1", "", supported=True))
    except HL7ParseError:
        return None
    return _header(msg, declared_charset(data))


def _header(msg: HL7Structure, declared_charset: str) -> MessageHeader:
    msh = msg.segments[0]
    code, event = msg.value(msh, 9, 1), msg.value(msh, 9, 2)
    return MessageHeader(
        message_id=msg.value(msh, 10),
        message_type=f"{code}^{event}" if event else code,
        version=msg.value(msh, 12),
        processing_id=msh.raw(11),
        sending_application=msh.raw(3),
        sending_facility=msh.raw(4),
        receiving_application=msh.raw(5),
        receiving_facility=msh.raw(6),
        charset=declared_charset,
        codec=msg.codec,
        encoding=msg.enc,
        sent_at=parse_hl7_datetime(msg.value(msh, 7)),
    )


def _interpret(
    msg: HL7Structure, header: MessageHeader, keys: tuple[Location, ...]
) -> ParsedReport:
    kind = _check_header(msg, header)
    notes: list[str] = []
    obr_at = msg.index("OBR")
    if kind == "report" and obr_at is None:
        raise HL7Unusable(
            f"{header.message_type} has no OBR segment", "OBR", ErrorCode.SEGMENT_SEQUENCE
        )
    if obr_at is not None and len(msg.all("OBR")) > 1:
        notes.append(f"{len(msg.all('OBR'))} OBR segments: keys taken from the first")
    group = _OrderGroup(msg, obr_at)

    patient_id = _patient_id(msg)
    accession, accession_key = _accession(msg, group, keys)
    study_uid = _study_uid(msg, group, notes)
    if not accession and not study_uid:
        raise HL7Unusable(
            f"no accession number ({', '.join(str(k) for k in keys)}) and no Study Instance UID",
            str(keys[0]),
            ErrorCode.REQUIRED_FIELD_MISSING,
        )
    if kind == "report":
        text, sections, status = _report_text(msg, group, notes)
        if not text:
            raise HL7Unusable(
                _no_text_reason(msg, group), "OBX-5", ErrorCode.REQUIRED_FIELD_MISSING
            )
    else:
        text, sections, status = _indication_text(msg, group)

    _check_length("patient_id", patient_id, "PID-3")
    _check_length("accession", accession, accession_key)
    _check_length("message_id", header.message_id, "MSH-10")
    return ParsedReport(
        header=header,
        kind=kind,
        patient_id=patient_id,
        accession=accession or None,
        study_uid=study_uid,
        status=status,
        text=text,
        sections=sections,
        observed_at=_observed_at(msg, group, header),
        accession_key=accession_key,
        notes=tuple(notes),
    )


def _check_header(msg: HL7Structure, header: MessageHeader) -> str:
    msh = msg.segments[0]
    code, event = msg.value(msh, 9, 1).upper(), msg.value(msh, 9, 2).upper()
    if not code:
        raise HL7Unusable("no message type", "MSH-9", ErrorCode.REQUIRED_FIELD_MISSING)
    if not header.message_id:
        raise HL7Unusable("no message control id", "MSH-10", ErrorCode.REQUIRED_FIELD_MISSING)
    if not header.version:
        raise HL7Unusable("no version id", "MSH-12", ErrorCode.REQUIRED_FIELD_MISSING)
    if header.version not in SUPPORTED_VERSIONS:
        raise HL7Unusable(
            f"HL7 version {header.version} is not supported (2.3 to 2.8)",
            "MSH-12",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    accepted = {**REPORT_MESSAGES, **ORDER_MESSAGES}
    if code not in accepted:
        raise HL7Unusable(
            f"message type {header.message_type} is not used by the node "
            "(ORU^R01 reports, ORM^O01 and OMI^O23 orders only)",
            "MSH-9",
            ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
        )
    if event not in accepted[code]:
        raise HL7Unusable(
            f"event {header.message_type} is not used by the node",
            "MSH-9",
            ErrorCode.UNSUPPORTED_EVENT_CODE,
        )
    return "report" if code in REPORT_MESSAGES else "indication"


class _OrderGroup:
    """The first order of a message: its OBR, the ORC that goes with it, what follows."""

    def __init__(self, msg: HL7Structure, obr_at: int | None) -> None:
        self.obr: Segment | None = None if obr_at is None else msg.segments[obr_at]
        # The ORC of the order precedes its OBR; an ORM may have an ORC and no OBR.
        orc_at = None
        if obr_at is not None:
            before = range(obr_at, -1, -1)
            orc_at = next((i for i in before if msg.segments[i].name == "ORC"), None)
        if orc_at is None:
            orc_at = msg.index("ORC")
        self.orc: Segment | None = None if orc_at is None else msg.segments[orc_at]
        # Results and comments of the order follow its OBR (or its ORC when there is no OBR).
        starts = [i for i in (obr_at, orc_at) if i is not None]
        self.body_start = (max(starts) + 1) if starts else len(msg.segments)


def _patient_id(msg: HL7Structure) -> str:
    pid = msg.first("PID")
    patient_id = msg.value(pid, 3) or msg.value(pid, 2)  # PID-2: external id, v2.3 senders
    if not patient_id:
        raise HL7Unusable(
            "no patient identifier (PID-3)", "PID-3", ErrorCode.REQUIRED_FIELD_MISSING
        )
    return patient_id


def _accession(
    msg: HL7Structure, group: _OrderGroup, keys: tuple[Location, ...]
) -> tuple[str, str | None]:
    for key in keys:
        if key.segment == "OBR":
            value = msg.value(group.obr, key.field, key.component)
            if not value and key.field in _ORC_FALLBACK:
                value = msg.value(group.orc, _ORC_FALLBACK[key.field], key.component)
                if value:
                    return value, f"ORC-{_ORC_FALLBACK[key.field]}"
        elif key.segment == "ORC":
            value = msg.value(group.orc, key.field, key.component)
        else:
            value = msg.value(msg.first(key.segment), key.field, key.component)
        if value:
            return value, str(key)
    return "", None


def _study_uid(msg: HL7Structure, group: _OrderGroup, notes: list[str]) -> str | None:
    candidates = [
        ("IPC-3", msg.value(msg.first("IPC"), 3)),
        ("ZDS-1", msg.value(msg.first("ZDS"), 1)),
    ]
    for obx in msg.all("OBX"):
        identifiers = [sub for comp in msg.components(obx.raw(3)) for sub in comp]
        if _DICOM_STUDY in identifiers or "study instance uid" in obx.raw(3).lower():
            candidates.append(("OBX-5", msg.value(obx, 5)))
    for where, value in candidates:
        if not value:
            continue
        if is_uid(value):
            return value
        notes.append(f"{where} {value[:70]!r} is not a valid UID: ignored")
    return None


def _report_text(
    msg: HL7Structure, group: _OrderGroup, notes: list[str]
) -> tuple[str, dict[str, str], str | None]:
    lines: list[tuple[str, str | None]] = []
    skipped_documents = 0
    status = normalise_status(msg.value(group.obr, 25))
    for segment in msg.segments[group.body_start :]:
        if segment.name == "NTE":
            for value in msg.field_text(segment, 3):
                lines.extend((line, None) for line in value.split("\n"))
        if segment.name != "OBX":
            continue
        value_type = msg.value(segment, 2).upper()
        if value_type in DOCUMENT_TYPES:
            skipped_documents += value_type == "ED"
            continue
        if value_type not in TEXT_TYPES or (value_type == "ST" and msg.value(segment, 6)):
            continue  # coded or numeric results, and measurements with units, are not prose
        values = msg.field_text(segment, 5)
        if len(values) == 1 and is_uid(values[0].strip()):
            continue  # a UID reference (study, series, SR instance), not report text
        hint = section_for_observation(sub for c in msg.components(segment.raw(3)) for sub in c)
        # Each repetition is a line; an OBX without value is a blank line (a paragraph break).
        for value in values or [""]:
            lines.extend((line, hint) for line in value.split("\n"))
        if status is None:
            status = normalise_status(msg.value(segment, 11))
    if skipped_documents:
        notes.append(f"{skipped_documents} encapsulated document(s) (OBX type ED) not read")
    text = "\n".join(line for line, _ in lines).strip()
    return text, detect_sections(lines) if text else {}, status


def _no_text_reason(msg: HL7Structure, group: _OrderGroup) -> str:
    types = sorted({msg.value(s, 2).upper() for s in msg.all("OBX")} - {""})
    if not types:
        return "no report text: the message has no OBX segment"
    documents = sorted(set(types) & DOCUMENT_TYPES)
    if documents:
        return (
            f"no report text: the report is only in OBX of type {'/'.join(documents)} "
            "(encapsulated PDF/CDA or a reference), which the node does not read"
        )
    return f"no report text: no OBX of type TX, FT or ST (types sent: {', '.join(types)})"


def _indication_text(
    msg: HL7Structure, group: _OrderGroup
) -> tuple[str, dict[str, str], str | None]:
    parts: list[str] = []
    parts += [_coded_text(msg, rep) for rep in msg.repetitions(group.obr, 31)]  # reason
    parts += msg.field_text(group.obr, 13)  # relevant clinical information
    parts += [_coded_text(msg, rep) for rep in msg.repetitions(group.orc, 16)]  # control reason
    for segment in msg.segments[group.body_start :]:
        if segment.name == "NTE":
            parts += msg.field_text(segment, 3)
        elif segment.name == "DG1":  # a diagnosis given as the reason for the order
            coded = _coded_text(msg, segment.raw(3).split(msg.enc.repetition)[0])
            parts.append(coded or msg.value(segment, 4))  # DG1-4: the older free-text form
        elif segment.name == "OBX" and msg.value(segment, 2).upper() in ("TX", "FT"):
            parts += msg.field_text(segment, 5)
    text = "\n".join(p.strip() for p in parts if p.strip())
    status = normalise_status(msg.value(group.orc, 5) or msg.value(group.orc, 1))
    return text, {INDICATION: text} if text else {}, status


def _coded_text(msg: HL7Structure, raw_repetition: str) -> str:
    """The words of a coded value (CE/CWE): its text component, else its identifier."""
    texts = [component[0].strip() for component in msg.components(raw_repetition)]
    return texts[1] if len(texts) > 1 and texts[1] else texts[0]


def _observed_at(msg: HL7Structure, group: _OrderGroup, header: MessageHeader) -> datetime | None:
    obx = msg.first("OBX", group.body_start)
    for value in (msg.value(group.obr, 7), msg.value(obx, 14), msg.value(group.orc, 9)):
        moment = parse_hl7_datetime(value)
        if moment is not None:
            return moment
    return header.sent_at


def _check_length(name: str, value: str | None, location: str | None) -> None:
    if value and len(value) > FIELD_LIMITS[name]:
        raise HL7Unusable(
            f"{location} is {len(value)} characters long; the node keeps at most "
            f"{FIELD_LIMITS[name]}",
            location,
            ErrorCode.VALUE_TOO_LONG,
        )


def _with_note(report: ParsedReport, note: str) -> ParsedReport:
    return replace(report, notes=(note, *report.notes))
