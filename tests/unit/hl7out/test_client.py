"""Sending a result message to python-hl7's MLLP server and reading what it answers."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from datetime import UTC, datetime

import pytest

from node.hl7out.client import MAX_ACK_BYTES, HL7SendError, read_ack, send_message
from node.hl7out.oru import MessageOptions, Patient, ResultObjects, RunResult, build_oru
from node.results.findings import AlgorithmInfo, Finding
from support.certs import make_pki
from support.hl7_receiver import hl7, hl7_receiver


def _message():
    result = RunResult(
        patient=Patient("PID-7", name="Doe^Jane"),
        accession="ACC-1",
        objects=ResultObjects("1.2.826.0.1.1"),
        algorithm=AlgorithmInfo("m", "1", "ab" * 32, True, ""),
        findings=(Finding("Pneumonia", "233604007", "SCT", "Pneumonia", 0.9, 0.5),),
        summary="Summary: abnormal.",
    )
    return build_oru(result, MessageOptions(), now=datetime(2026, 12, 2, tzinfo=UTC))


def _reject(code: str, reason: str):
    def answer(message):
        ack = str(message.create_ack(code))
        return hl7.parse(f"{ack}\rERR||OBR^1^3|204^Unknown key identifier^HL70357|E||||{reason}")

    return answer


def test_an_accepted_message_arrives_whole_and_its_ack_is_returned() -> None:
    message = _message()
    with hl7_receiver() as receiver:
        ack = send_message("127.0.0.1", receiver.port, message.data, message.control_id)
    assert (ack.code, ack.control_id) == ("AA", message.control_id)
    (received,) = receiver.received
    assert str(received).encode("utf-8") == message.data
    assert str(received.segment("PID")[5]) == "Doe^Jane"


def test_an_application_error_is_a_failure_with_the_receivers_reason() -> None:
    message = _message()
    with (
        hl7_receiver(_reject("AE", "No order ACC-1")) as receiver,
        pytest.raises(HL7SendError) as failure,
    ):
        send_message("127.0.0.1", receiver.port, message.data, message.control_id)
    assert failure.value.code == "AE" and not failure.value.transient
    assert failure.value.reason == "the receiver answered AE: No order ACC-1"


def test_a_reject_before_v2_5_gives_its_msa_3_text() -> None:
    ack = read_ack(b"MSH|^~\\&|RIS||CXRNODE||20261202||ACK|9|P|2.3\rMSA|AR|ABC|Queue full\r")
    assert (ack.code, ack.control_id, ack.text) == ("AR", "ABC", "Queue full")


def test_an_ack_of_another_message_is_not_an_acceptance() -> None:
    message = _message()

    def answer(received):
        # A receiver that mixed up its connections: MSA-2 names another message.
        ack = str(received.create_ack("AA"))
        return hl7.parse(ack.replace(f"MSA|AA|{message.control_id}", "MSA|AA|SOMEONE-ELSE"))

    with (
        hl7_receiver(answer) as receiver,
        pytest.raises(HL7SendError, match="answers message 'SOMEONE-ELSE'"),
    ):
        send_message("127.0.0.1", receiver.port, message.data, message.control_id)


def test_a_receiver_that_hangs_up_without_answering_is_a_failure() -> None:
    message = _message()
    with (
        hl7_receiver(lambda received: None) as receiver,
        pytest.raises(HL7SendError, match="closed the connection without an ACK"),
    ):
        send_message("127.0.0.1", receiver.port, message.data, message.control_id)
    assert len(receiver.received) == 1


def test_nobody_listening_is_a_transient_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    message = _message()
    with pytest.raises(HL7SendError, match="cannot reach") as failure:
        send_message("127.0.0.1", port, message.data, message.control_id)
    assert failure.value.transient


def _raw_peer(behaviour) -> tuple[int, threading.Thread]:
    """A TCP peer that reads the message and then does ``behaviour(conn)``."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                behaviour(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline() -> None:
    def trickle(conn) -> None:
        with contextlib.suppress(OSError):  # the client gave up: what the test wants
            for byte in b"\x0bMSH|^~\\&|":
                conn.sendall(bytes([byte]))
                time.sleep(0.2)

    port, thread = _raw_peer(trickle)
    message = _message()
    started = time.monotonic()
    with pytest.raises(HL7SendError, match="did not answer within 1 s"):
        send_message("127.0.0.1", port, message.data, message.control_id, timeout_s=1)
    assert time.monotonic() - started < 1.5
    thread.join(5)


def test_an_endless_answer_is_refused_at_the_size_bound() -> None:
    def flood(conn) -> None:
        with contextlib.suppress(OSError):  # the client hangs up mid-flood
            conn.sendall(b"\x0b" + b"A" * (MAX_ACK_BYTES + 8192))

    port, thread = _raw_peer(flood)
    message = _message()
    with pytest.raises(HL7SendError, match="exceeds"):
        send_message("127.0.0.1", port, message.data, message.control_id)
    thread.join(5)


def test_the_message_goes_over_tls_to_a_receiver_with_a_trusted_certificate(tmp_path) -> None:
    pki = make_pki(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    client = ssl.create_default_context(cafile=str(pki.ca))
    untrusting = ssl.create_default_context()
    message = _message()
    with hl7_receiver(tls=server) as receiver:
        ack = send_message("127.0.0.1", receiver.port, message.data, message.control_id, tls=client)
        assert ack.code == "AA"
        with pytest.raises(HL7SendError, match="TLS with 127.0.0.1"):
            send_message(
                "127.0.0.1", receiver.port, message.data, message.control_id, tls=untrusting
            )
