"""The AI result of one run as an HL7 v2 ORU^R01, for a RIS or reporting worklist.

One message per finished run::

    MSH  sender, receiver, ORU^R01^ORU_R01, MSH-18 UNICODE UTF-8
    PID  the patient as the source study names them (id, issuer, name, birth date, sex)
    ORC  RE (observations to follow), the accession as filler order number
    OBR  the AI result: service, study time, status F (C for a re-run), priority
    TQ1  priority again, where v2.5 moved it (S = stat when a critical finding is present)
    OBX  one NM per label: probability, A/N at the label's threshold, the model as method
    OBX  the summary (TX), then the Study, SR series and SR instance UIDs

A RIS matches the result to its order by the accession (ORC-3, OBR-3 and OBR-18, where
IHE's Scheduled Workflow puts it) and to the study by its Study Instance UID; the priority
lets it move a study with a critical finding up the reading worklist. Versions before 2.5
have no TQ1: the priority goes in OBR-5 and OBR-27 as those versions read it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from node.destinations import hl7_version_problem
from node.feeds.hl7ack import version_at_least
from node.feeds.hl7codec import EncodingChars, escape
from node.results.findings import AlgorithmInfo, Finding, ImageResult

ENCODING = EncodingChars()
CHARSET = "UNICODE UTF-8"  # MSH-18, HL7 table 0211; the message is encoded in UTF-8

STAT = "S"  # HL7 table 0027 priority: stat
ROUTINE = "R"
FINAL = "F"  # HL7 table 0123 result status: final
CORRECTED = "C"  # a re-run's result replaces the earlier one
ABNORMAL = "A"  # HL7 table 0078: the model calls the finding present
NORMAL = "N"

# What the result is: LOINC "Diagnostic imaging study"; a site may name its own service.
DEFAULT_SERVICE = ("18748-4", "Diagnostic imaging study", "LN")
SUMMARY_CODE = ("18782-3", "Radiology Study observation (narrative)", "LN")
STUDY_UID_CODE = ("110180", "Study Instance UID", "DCM")
SERIES_UID_CODE = ("112002", "Series Instance UID", "DCM")
# No standard code names a SOP Instance UID as an observation: a local one, the value a
# reference pointer (RP) to the DICOM object, written as IHE's ZDS writes the study.
SR_INSTANCE_CODE = ("SR-UID", "AI findings SR instance UID", "99CXRNODE")
LOCAL_SCHEME = "99CXRNODE"


@dataclass(frozen=True)
class Patient:
    """The patient as the source study names them (DICOM Patient module)."""

    id: str
    issuer: str = ""
    name: str = ""  # DICOM PN, family^given^middle^prefix^suffix: HL7 XPN has that order
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M, F, O (DICOM and HL7 table 0001 agree)


@dataclass(frozen=True)
class ResultObjects:
    """The UIDs of what the run wrote to the PACS."""

    study_uid: str
    sr_series_uid: str | None = None
    sr_instance_uid: str | None = None


@dataclass(frozen=True)
class RunResult:
    """What an ORU^R01 says about one run.

    Attributes
    ----------
    patient, accession:
        From the source study.
    objects:
        The study's and the result SR's UIDs.
    findings:
        Every label of the model at study level (highest probability over the images).
    summary:
        The SR's summary sentence; the model's disclaimer is added when it is not trained.
    run:
        The run's number for the study; runs after the first send a corrected result.
    observed_at:
        The study's date and time, when the source has them.
    """

    patient: Patient
    accession: str
    objects: ResultObjects
    algorithm: AlgorithmInfo
    findings: tuple[Finding, ...]
    summary: str
    run: int = 1
    observed_at: datetime | None = None

    @property
    def corrected(self) -> bool:
        return self.run > 1


@dataclass(frozen=True)
class MessageOptions:
    """How a destination wants its messages (one per configured HL7 destination).

    Attributes
    ----------
    version:
        MSH-12, "2.3" to "2.8"; 2.5.1 by default.
    critical:
        Label names whose presence makes the result stat (OBR-27 / TQ1-9 = S).
    """

    version: str = "2.5.1"
    sending_application: str = "CXRNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"
    service: tuple[str, str, str] = DEFAULT_SERVICE
    critical: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if problem := hl7_version_problem(self.version):
            raise ValueError(f"HL7 version {problem}")
        if self.processing_id not in ("P", "T", "D"):
            raise ValueError(f"processing id {self.processing_id!r} is not P, T or D")


@dataclass(frozen=True)
class ResultMessage:
    """A built message: its MSH-10 (which the ACK's MSA-2 must echo) and its bytes."""

    control_id: str
    priority: str
    data: bytes  # segments ending in CR, UTF-8, without MLLP framing


def priority_of(findings: Iterable[Finding], critical: frozenset[str]) -> str:
    """Stat when any present finding is one the destination calls critical."""
    return STAT if any(f.present and f.name in critical for f in findings) else ROUTINE


def run_result(
    images: Sequence[ImageResult],
    algorithm: AlgorithmInfo,
    objects: ResultObjects,
    summary: str,
    run: int,
) -> RunResult:
    """A run's result at study level, from its images as the result writers get them: each
    label's highest probability over the images; the patient, accession and study time from
    the first image's header (the study's instances agree on them: the receiver refuses one
    naming another patient)."""
    source = images[0].source
    findings = tuple(
        max((image.findings[i] for image in images), key=lambda f: f.probability)
        for i in range(len(images[0].findings))
    )
    patient = Patient(
        id=str(source.get("PatientID", "") or ""),
        issuer=str(source.get("IssuerOfPatientID", "") or ""),
        name=str(source.get("PatientName", "") or ""),
        birth_date=str(source.get("PatientBirthDate", "") or ""),
        sex=str(source.get("PatientSex", "") or "").upper()[:1],
    )
    return RunResult(
        patient=patient,
        accession=str(source.get("AccessionNumber", "") or ""),
        objects=objects,
        algorithm=algorithm,
        findings=findings,
        summary=summary,
        run=run,
        observed_at=_study_time(source),
    )


def _study_time(source) -> datetime | None:
    date, time = str(source.get("StudyDate", "") or ""), str(source.get("StudyTime", "") or "")
    try:
        return datetime.strptime(
            date + (time.split(".")[0] or "000000")[:6].ljust(6, "0"), "%Y%m%d%H%M%S"
        )
    except ValueError:
        return None


def build_oru(
    result: RunResult,
    options: MessageOptions,
    *,
    now: datetime | None = None,
    control_id: str | None = None,
) -> ResultMessage:
    """Build the ORU^R01 of one run.

    Parameters
    ----------
    result:
        The run's identifiers, findings and result UIDs.
    options:
        The destination's version, names and critical findings.
    now:
        The message time (MSH-7, OBR-22); the current time by default.
    control_id:
        MSH-10, at most 20 characters; a random one by default.

    Returns
    -------
    ResultMessage

    Raises
    ------
    ValueError
        The result has no findings or no patient id: no RIS can file such a message.
    """
    if not result.findings:
        raise ValueError("a result message needs at least one finding")
    if not result.patient.id.strip():
        raise ValueError("a result message needs the patient's id (PID-3)")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    version = options.version
    # MSH-10 is at most 20 characters before v2.7.
    control_id = (control_id or uuid.uuid4().hex.upper())[:20]
    priority = priority_of(result.findings, options.critical)
    status = CORRECTED if result.corrected else FINAL
    segments = [
        _msh(options, now, control_id),
        _pid(result.patient),
        _segment("ORC", "RE", "", _text(result.accession), "", "CM"),
        _obr(result, options, now, status, priority),
    ]
    if version_at_least(version, (2, 5)):
        # TQ1-9 priority: CWE from v2.5 (table 0485), the same S / R codes.
        segments.append(
            _segment("TQ1", "1", *[""] * 7, f"{priority}^{_PRIORITY[priority]}^HL70485")
        )
    observed = _timestamp(result.observed_at or now)
    method = _method(result.algorithm)
    equipment = f"{_text(result.algorithm.package_sha256[:16])}^{LOCAL_SCHEME}"
    sequence = 0
    for finding in result.findings:
        sequence += 1
        segments.append(
            _segment(
                "OBX",
                str(sequence),
                "NM",
                _coded(finding.code_value, finding.code_meaning, finding.coding_scheme),
                "",
                f"{finding.probability:.4f}",
                "",
                f"<{finding.threshold:.4f}",  # OBX-7: below the threshold reads as absent
                ABNORMAL if finding.present else NORMAL,
                "",
                "",
                status,
                "",
                "",
                observed,
                "",
                "",
                method,
                equipment,
            )
        )
    summary = [result.summary]
    if not result.algorithm.trained:
        summary.append(result.algorithm.disclaimer)
    references = [
        ("TX", SUMMARY_CODE, "~".join(_text(line) for line in summary if line.strip())),
        ("ST", STUDY_UID_CODE, _text(result.objects.study_uid)),
    ]
    if result.objects.sr_series_uid:
        references.append(("ST", SERIES_UID_CODE, _text(result.objects.sr_series_uid)))
    if result.objects.sr_instance_uid:
        pointer = f"{_text(result.objects.sr_instance_uid)}^{_text(options.sending_application)}"
        references.append(("RP", SR_INSTANCE_CODE, f"{pointer}^Application^DICOM"))
    for value_type, code, value in references:
        sequence += 1
        segments.append(
            _segment("OBX", str(sequence), value_type, _coded(*code), "", value, *[""] * 5, status)
        )
    text = "\r".join(segments) + "\r"
    return ResultMessage(control_id, priority, text.encode("utf-8"))


_PRIORITY = {STAT: "Stat", ROUTINE: "Routine"}


def _msh(options: MessageOptions, now: datetime, control_id: str) -> str:
    version = options.version
    message_type = "ORU^R01^ORU_R01" if version_at_least(version, (2, 3, 1)) else "ORU^R01"
    return "|".join(
        [
            "MSH",
            "^~\\&",
            _text(options.sending_application),
            _text(options.sending_facility),
            _text(options.receiving_application),
            _text(options.receiving_facility),
            _timestamp(now),
            "",
            message_type,
            control_id,
            options.processing_id,
            version,
            "",
            "",
            "AL",  # MSH-15: an accept acknowledgement is always wanted
            "NE",  # MSH-16: original mode, the ACK is the application's answer
            "",
            CHARSET,
        ]
    )


def _pid(patient: Patient) -> str:
    identifier = _text(patient.id)
    if patient.issuer:
        identifier += f"^^^{_text(patient.issuer)}"
    name = "^".join(_text(part) for part in patient.name.split("^")[:5]).rstrip("^")
    return _segment(
        "PID", "1", "", identifier, "", name, "", _text(patient.birth_date), _text(patient.sex)
    )


def _obr(
    result: RunResult, options: MessageOptions, now: datetime, status: str, priority: str
) -> str:
    accession = _text(result.accession)
    fields = [""] * 27
    fields[0] = "1"
    fields[2] = accession  # OBR-3 filler order number
    fields[3] = _coded(*options.service)
    if not version_at_least(options.version, (2, 5)):
        fields[4] = priority  # OBR-5, withdrawn from v2.5 on
    fields[6] = _timestamp(result.observed_at or now)  # OBR-7 observation date/time
    fields[17] = accession  # OBR-18 placer field 1: IHE's accession number
    fields[21] = _timestamp(now)  # OBR-22 results report / status change
    fields[23] = "RAD"  # OBR-24 diagnostic service section (table 0074)
    fields[24] = status  # OBR-25
    fields[26] = f"^^^^^{priority}"  # OBR-27 quantity/timing: component 6 is the priority
    return _segment("OBR", *fields)


def _method(algorithm: AlgorithmInfo) -> str:
    """OBX-17 observation method: the model, by name and version."""
    name, version = _text(algorithm.name), _text(algorithm.version)
    return f"{name} {version}^{name} {version}^{LOCAL_SCHEME}"


def _coded(code: str, meaning: str, scheme: str) -> str:
    return f"{_text(code)}^{_text(meaning)}^{_text(scheme)}"


def _segment(name: str, *fields: str) -> str:
    return "|".join((name, *fields)).rstrip("|")


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        return moment.strftime("%Y%m%d%H%M%S")
    return moment.strftime("%Y%m%d%H%M%S%z")


def _text(value: str | None) -> str:
    """A value written as one component: delimiters escaped, line breaks as HL7's ``\\.br\\``."""
    if not value:
        return ""
    lines = re.split(r"\r\n|\r|\n", value)
    return f"{ENCODING.escape}.br{ENCODING.escape}".join(escape(line, ENCODING) for line in lines)
