"""The HL7 parser on the real public messages (dcm4che, FHIR-Converter, WashU) and on edge
cases built from them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from node.feeds.errors import ErrorCode, HL7ParseError, HL7Unusable
from node.feeds.hl7message import parse_message
from node.feeds.values import parse_hl7_datetime

ORU = (
    "MSH|^~\\&|RIS|HOSP|CXR|NODE|20240301101500||ORU^R01|MSG1|P|2.5.1\r"
    "PID|1||P123^^^HOSP^MR\r"
    "OBR|1|PL1|ACC1|71046^XR CHEST 2V|||20240301093000|||||||||||||||20240301101500||CR|{status}\r"
    "{obx}"
)


def oru(obx: str, status: str = "F") -> bytes:
    return ORU.format(obx=obx, status=status).encode()


def washu(washu_logs, where: str, contains: bytes) -> bytes:
    for path, messages in washu_logs:
        if path.as_posix().endswith(where):
            return next(m for m in messages if contains in m)
    raise AssertionError(f"no {where} in the WashU logs")


def dcm4che(shared_data: Path, name: str) -> bytes:
    return (shared_data / "hl7-dcm4che-testdata" / name).read_bytes()


def fhir(shared_data: Path, name: str) -> bytes:
    return (shared_data / "hl7-fhir-converter-samples" / name).read_bytes()


# --- text, escapes, repetitions, sections -----------------------------------------------


def test_ft_formatting_and_escapes_become_plain_text():
    report = parse_message(
        oru(r"OBX|1|FT|18782-3^Findings^LN||Lungs clear.\.br\No effusion \T\ no PTX.||||||F" "\r")
    )
    assert report.text == "Lungs clear.\nNo effusion & no PTX."
    assert report.sections == {"FINDINGS": "Lungs clear.\nNo effusion & no PTX."}


def test_tx_repetitions_are_lines_and_headings_make_sections():
    report = parse_message(
        oru("OBX|1|TX|||INDICATION: cough~~FINDINGS:~Clear lungs.~~IMPRESSION: Normal.||||||F\r")
    )
    assert report.text == "INDICATION: cough\n\nFINDINGS:\nClear lungs.\n\nIMPRESSION: Normal."
    assert report.sections == {
        "INDICATION": "cough",
        "FINDINGS": "Clear lungs.",
        "IMPRESSION": "Normal.",
    }


def test_ed_and_rp_observations_are_skipped_without_failing():
    report = parse_message(
        oru(
            "OBX|1|ED|18748-4^Report^LN||^Application^PDF^Base64^JVBERi0=||||||F\r"
            "OBX|2|RP|||ACC1^UK^ZB||||||F\r"
            "OBX|3|TX|||No acute disease.||||||F\r"
        )
    )
    assert report.text == "No acute disease."
    assert any("ED" in note for note in report.notes)


def test_uid_and_measurement_observations_are_not_report_text():
    report = parse_message(
        oru(
            "OBX|1|ST|113014^DICOM Study^DCM||1.2.840.113619.2.55.3.1||||||F\r"
            "OBX|2|ST|^Body Weight||65|kg|||||F\r"
            "OBX|3|TX|||Heart size normal.||||||F\r"
        )
    )
    assert report.text == "Heart size normal."
    assert report.study_uid == "1.2.840.113619.2.55.3.1"


@pytest.mark.parametrize(("sent", "stored"), [("F", "F"), ("Wet Read", "P"), ("Prelim", "P")])
def test_status_is_normalised_to_hl7_codes(sent, stored):
    assert parse_message(oru("OBX|1|TX|||x||||||F\r", status=sent)).status == stored


def test_observation_time_comes_from_obr_7():
    report = parse_message(oru("OBX|1|TX|||x||||||F\r"))
    assert report.observed_at == datetime(2024, 3, 1, 9, 30)


# --- WashU RIS corpus -----------------------------------------------------------------------


def test_iso_8859_1_report_without_msh_18_keeps_plus_minus_and_division(washu_logs):
    data = washu(washu_logs, "extraction/20250814.log", b"\xb160%\xf7")
    report = parse_message(data)
    assert "special chars: ±60%÷" in report.text
    assert "±60%÷" in report.sections["FINDINGS"]
    assert any("not UTF-8" in note for note in report.notes)


def test_washu_st_lines_are_sectioned_by_their_obx_suffix(washu_logs):
    data = washu(washu_logs, "extraction/20250814.log", b"|&TCM|")
    report = parse_message(data)
    assert report.accession == "620943129" and report.accession_key == "OBR-3"
    assert {"EXAMINATION", "IMPRESSION", "TECHNIQUE"} <= report.sections.keys()
    assert report.sections["TECHNIQUE"].startswith("Patient ")
    assert report.study_uid and report.study_uid.startswith("2.25.")  # from ZDS-1


def test_washu_v2_3_patient_id_falls_back_to_pid_2(washu_logs):
    report = parse_message(washu(washu_logs, "patient_ids/20260122.log", b"|1.2.3.4.5|"))
    assert report.patient_id == "999999-001"
    assert report.version == "2.3"


def test_washu_oru_without_observations_is_unusable(washu_logs):
    data = washu(
        washu_logs, "extraction/20250814.log", b"2.25.42963736603043323149340140233960145224"
    )
    with pytest.raises(HL7Unusable) as caught:
        parse_message(data)
    assert caught.value.code == ErrorCode.REQUIRED_FIELD_MISSING
    assert caught.value.error_location == "OBX-5"
    assert caught.value.header.message_id == "2.25.42963736603043323149340140233960145224"


@pytest.mark.parametrize("junk", [b"Bad file", b"(.idx/.msg)", b"Unparseable message", b" \r\n"])
def test_washu_junk_is_a_parse_error(junk):
    with pytest.raises(HL7ParseError):
        parse_message(junk)


# --- dcm4che and FHIR-Converter samples ---------------------------------------------------


def test_imaging_order_gives_an_indication_with_the_ipc_study_uid(shared_data):
    report = parse_message(dcm4che(shared_data, "OMI^O23-ImagingOrder.hl7"))
    assert report.kind == "indication" and report.message_type == "OMI^O23"
    assert report.study_uid == "1.2.392.200036.9125.0.198811291108.7"
    assert report.text.startswith("Rheumatoid, other arthritis with motor score from 12 –35.")
    assert "RequestedProcedureComments" in report.text
    assert report.status == "SC"


def test_ihe_sites_can_take_the_accession_from_ipc_1_or_obr_18(shared_data):
    data = dcm4che(shared_data, "OMI^O23-ImagingOrder.hl7")
    assert parse_message(data).accession == "FillerOrderNumberImagingServiceRequest"
    assert parse_message(data, ("IPC-1", "OBR-18")).accession == "AccessionNumber"
    general = dcm4che(shared_data, "ORM^O01-GeneralOrder.hl7")
    assert parse_message(general, ("IPC-1", "OBR-18")).accession_key == "OBR-18"


def test_general_order_file_is_really_an_omi(shared_data):
    report = parse_message(dcm4che(shared_data, "ORM^O01-GeneralOrder.hl7"))
    assert report.message_type == "OMI^O23"
    assert report.study_uid == "1.2.392.200036.9125.0.198811291108.7"  # ZDS-1


@pytest.mark.parametrize("name", ["ORU^R01-PDF.hl7", "ORU^R01-CDA.hl7"])
def test_report_only_in_an_encapsulated_document_is_unusable(shared_data, name):
    with pytest.raises(HL7Unusable, match="encapsulated") as caught:
        parse_message(dcm4che(shared_data, name))
    assert caught.value.error_location == "OBX-5"


@pytest.mark.parametrize(
    "name",
    [
        "ADT^A31-UpdatePersonInfo.hl7",
        "ADT^A40-PatientMerge.hl7",
        "SIU^S12-NewAppointmentBooking.hl7",
        "OMG^O19-GeneralClinicalOrder-Eyecare.hl7",
    ],
)
def test_other_message_types_are_unsupported(shared_data, name):
    with pytest.raises(HL7Unusable) as caught:
        parse_message(dcm4che(shared_data, name))
    assert caught.value.code == ErrorCode.UNSUPPORTED_MESSAGE_TYPE
    assert caught.value.error_location == "MSH-9"


def test_bom_order_with_lf_segments_takes_the_accession_from_orc(shared_data):
    data = fhir(shared_data, "ORM-O01-01.hl7")
    assert data.startswith(b"\xef\xbb\xbf") and b"\r" not in data
    report = parse_message(data)
    assert report.message_id == "MSG00018" and report.version == "2.6"
    assert (report.accession, report.accession_key) == ("1201", "ORC-3")
    assert report.patient_id == "PATID1234"
    assert "Traumatic brain injury" in report.text or "TBI" in report.text
    assert report.observed_at == datetime(2021, 10, 20, 9, 45)  # 12:00 at +02:15, in UTC


def test_lab_result_without_narrative_is_unusable(shared_data):
    with pytest.raises(HL7Unusable, match="types sent: SN"):
        parse_message(fhir(shared_data, "ORU-R01-RMGEAD.hl7"))


def test_document_messages_are_unsupported(shared_data):
    with pytest.raises(HL7Unusable) as caught:
        parse_message(fhir(shared_data, "MDM-T02-01.hl7"))
    assert caught.value.code == ErrorCode.UNSUPPORTED_MESSAGE_TYPE


# --- refusals -------------------------------------------------------------------------------


def test_unsupported_version_is_refused():
    data = oru("OBX|1|TX|||x||||||F\r").replace(b"|P|2.5.1", b"|P|2.2")
    with pytest.raises(HL7Unusable) as caught:
        parse_message(data)
    assert caught.value.code == ErrorCode.UNSUPPORTED_VERSION


def test_no_accession_and_no_study_uid_is_refused_at_the_first_key():
    data = oru("OBX|1|TX|||x||||||F\r").replace(b"|PL1|ACC1|", b"|||")
    with pytest.raises(HL7Unusable) as caught:
        parse_message(data)
    assert (caught.value.code, caught.value.error_location) == (101, "OBR-3")


def test_no_patient_is_refused():
    data = oru("OBX|1|TX|||x||||||F\r").replace(b"P123^^^HOSP^MR", b"")
    with pytest.raises(HL7Unusable, match="PID-3"):
        parse_message(data)


def test_accession_longer_than_the_database_holds_is_refused():
    data = oru("OBX|1|TX|||x||||||F\r").replace(b"|ACC1|", b"|" + b"9" * 65 + b"|")
    with pytest.raises(HL7Unusable) as caught:
        parse_message(data)
    assert (caught.value.code, caught.value.error_location) == (104, "OBR-3")


def test_invalid_accession_key_names_are_refused():
    with pytest.raises(ValueError, match="OBR3"):
        parse_message(oru("OBX|1|TX|||x\r"), ("OBR3",))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240301101500+0100", datetime(2024, 3, 1, 9, 15)),
        ("20240301101500-1200", datetime(2024, 3, 1, 22, 15)),
        ("20240301101500+1400", datetime(2024, 2, 29, 20, 15)),
        ("20240301101500+2400", None),  # no such offset: timezone() raised ValueError
        ("20240301101500-9999", None),
        ("20240301101500+0160", None),
        ("00010101000000+0100", None),  # before year 1 in UTC: astimezone raised OverflowError
        ("99991231235959-0100", None),
    ],
)
def test_hl7_times_with_offsets_are_utc_or_none_when_impossible(value, expected):
    assert parse_hl7_datetime(value) == expected
