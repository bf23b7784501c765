"""HL7 destinations as configured, and their message files sent to python-hl7's server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from node.destinations import HL7Destination, is_hl7_destination
from node.errors import ConfigError
from node.hl7out.destination import HL7ResultSender
from node.hl7out.oru import MessageOptions, Patient, ResultObjects, RunResult, build_oru
from node.results.findings import AlgorithmInfo, Finding
from support.hl7_receiver import hl7_receiver


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mllp://ris.example:2576", HL7Destination("ris.example", 2576)),
        ("mllps://RIS^HOSP@10.0.0.5:6661", HL7Destination("10.0.0.5", 6661, True, "RIS", "HOSP")),
        ("mllp://RIS@[::1]:2575", HL7Destination("::1", 2575, False, "RIS")),
    ],
)
def test_destinations_parse_and_print_back_the_same(text: str, expected) -> None:
    assert HL7Destination.parse(text) == expected
    assert str(expected) == text
    assert is_hl7_destination(text)


@pytest.mark.parametrize(
    "text", ["ris:2576", "mllp://ris", "mllp://ris:0", "mllp://ris:99999", "http://ris:80"]
)
def test_malformed_destinations_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="HL7 destination"):
        HL7Destination.parse(text)


def _message_file(tmp_path, name: str):
    result = RunResult(
        patient=Patient("PID-7"),
        accession="ACC-1",
        objects=ResultObjects("1.2.826.0.1.1"),
        algorithm=AlgorithmInfo("m", "1", "ab" * 32, True, ""),
        findings=(Finding("Pneumonia", "233604007", "SCT", "Pneumonia", 0.9, 0.5),),
        summary="Summary: abnormal.",
    )
    message = build_oru(result, MessageOptions(), now=datetime(2026, 12, 2, tzinfo=UTC))
    path = tmp_path / name
    path.write_bytes(message.data)
    return path, message


def test_each_file_is_sent_and_confirmed_alone(tmp_path) -> None:
    first, first_message = _message_file(tmp_path, "a.hl7")
    second, _ = _message_file(tmp_path, "b.hl7")
    broken = tmp_path / "broken.hl7"
    broken.write_bytes(b"not hl7")

    def answer(message):
        code = "AA" if str(message.segment("MSH")[10]) == first_message.control_id else "AE"
        return message.create_ack(code)

    with hl7_receiver(answer) as receiver:
        destination = HL7Destination("127.0.0.1", receiver.port)
        deliveries = HL7ResultSender().send(destination, [first, second, broken])
    assert [d.ok for d in deliveries] == [True, False, False]
    assert deliveries[1].error == f"{destination}: the receiver answered AE"
    assert "control id" in deliveries[2].error
    assert len(receiver.received) == 2


def test_an_mllps_destination_without_tls_settings_fails_clearly(tmp_path) -> None:
    path, _ = _message_file(tmp_path, "a.hl7")
    (delivery,) = HL7ResultSender().send(HL7Destination("127.0.0.1", 1, tls=True), [path])
    assert "needs tls_ca" in delivery.error
