"""The ORU^R01 of a run, read back by python-hl7 (a parser the project did not write)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from node.hl7out.oru import (
    MessageOptions,
    Patient,
    ResultObjects,
    RunResult,
    build_oru,
)
from node.results.findings import AlgorithmInfo, Finding

hl7 = pytest.importorskip("hl7", reason="python-hl7 (the dev extra) is not installed")

MODEL = AlgorithmInfo("cxrnode-abnormal-pneumonia", "2.1.0", "ab" * 32, True, "")
NOW = datetime(2026, 12, 2, 8, 30, tzinfo=UTC)


def _finding(name: str, code: str, probability: float) -> Finding:
    return Finding(name, code, "SCT", name, probability, 0.5)


def _result(**changes) -> RunResult:
    values = dict(
        patient=Patient("PID-7", "HOSP", "O'Neil^Mary^J", "19610412", "F"),
        accession="ACC|42^7",
        objects=ResultObjects("1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"),
        algorithm=MODEL,
        findings=(_finding("Pneumonia", "233604007", 0.91), _finding("Abnormal", "263654008", 0.3)),
        summary="Summary: abnormal.\nPresent: Pneumonia.",
        observed_at=datetime(2026, 12, 1, 7, 0, tzinfo=UTC),
    )
    return RunResult(**(values | changes))


def _parse(result: RunResult, options: MessageOptions) -> hl7.Message:
    message = build_oru(result, options, now=NOW)
    parsed = hl7.parse(message.data.decode("utf-8"))
    assert str(parsed.segment("MSH")[10]) == message.control_id
    return parsed


def test_every_label_is_one_coded_observation_with_probability_and_call() -> None:
    msg = _parse(_result(), MessageOptions())
    observations = [s for s in msg if str(s[0]) == "OBX" and str(s[2]) == "NM"]
    assert [str(o[3][0][0]) for o in observations] == ["233604007", "263654008"]
    assert [float(str(o[5])) for o in observations] == [0.91, 0.3]
    assert [str(o[8]) for o in observations] == ["A", "N"]  # present / absent at 0.5
    assert all(str(o[11]) == "F" for o in observations)
    assert str(observations[0][17][0][0]) == "cxrnode-abnormal-pneumonia 2.1.0"


def test_identifiers_come_from_the_source_escaped_where_they_hold_delimiters() -> None:
    msg = _parse(_result(), MessageOptions())
    pid = msg.segment("PID")
    assert str(pid[3][0][0]) == "PID-7" and str(pid[3][0][3]) == "HOSP"
    assert str(pid[5][0][0]) == "O'Neil" and str(pid[5][0][1]) == "Mary"
    obr = msg.segment("OBR")
    # python-hl7 leaves escapes in place; the raw field holds the escaped accession.
    assert str(obr[3]) == r"ACC\F\42\S\7" == str(obr[18])
    assert msg.unescape(str(obr[3])) == "ACC|42^7"
    uids = {str(s[3][0][0]): s for s in msg if str(s[0]) == "OBX" and str(s[2]) in ("ST", "RP")}
    assert str(uids["110180"][5]) == "1.2.826.0.1.1"
    assert str(uids["112002"][5]) == "1.2.826.0.1.2"
    assert str(uids["SR-UID"][5][0][0]) == "1.2.826.0.1.3"


def test_a_critical_present_finding_makes_the_result_stat() -> None:
    routine = _parse(_result(), MessageOptions(critical=frozenset({"Pneumothorax"})))
    stat = _parse(_result(), MessageOptions(critical=frozenset({"Pneumonia"})))
    assert str(routine.segment("TQ1")[9][0][0]) == "R"
    assert str(stat.segment("TQ1")[9][0][0]) == "S"
    assert str(stat.segment("OBR")[27][0][5]) == "S"
    # Critical but absent: routine.
    absent = _parse(_result(), MessageOptions(critical=frozenset({"Abnormal"})))
    assert str(absent.segment("TQ1")[9][0][0]) == "R"


def test_a_rerun_sends_a_corrected_result() -> None:
    msg = _parse(_result(run=2), MessageOptions())
    assert str(msg.segment("OBR")[25]) == "C"
    assert {str(s[11]) for s in msg if str(s[0]) == "OBX"} == {"C"}


def test_version_2_3_has_no_tq1_and_carries_the_priority_in_obr() -> None:
    msg = _parse(_result(), MessageOptions(version="2.3", critical=frozenset({"Pneumonia"})))
    assert str(msg.segment("MSH")[12]) == "2.3"
    assert str(msg.segment("MSH")[9]) == "ORU^R01"
    assert not [s for s in msg if str(s[0]) == "TQ1"]
    assert str(msg.segment("OBR")[5]) == "S"


def test_summary_keeps_its_lines_and_an_untrained_model_its_disclaimer() -> None:
    untrained = AlgorithmInfo("demo", "0.1", "cd" * 32, False, "NOT A TRAINED CLINICAL MODEL")
    msg = _parse(_result(algorithm=untrained), MessageOptions())
    summary = next(s for s in msg if str(s[0]) == "OBX" and str(s[2]) == "TX")
    lines = [msg.unescape(str(rep)) for rep in summary[5]]
    assert lines[0] == "Summary: abnormal.\rPresent: Pneumonia."  # \.br\ reads as a break
    assert lines[-1] == "NOT A TRAINED CLINICAL MODEL"


@pytest.mark.parametrize("version", ["2.2", "3.0", "2.5.x", ""])
def test_unsupported_versions_are_refused_when_configured(version: str) -> None:
    with pytest.raises(ValueError, match="HL7 version"):
        MessageOptions(version=version)


def test_a_result_without_patient_id_is_refused() -> None:
    with pytest.raises(ValueError, match="PID-3"):
        build_oru(_result(patient=Patient("")), MessageOptions())
