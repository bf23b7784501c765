"""The MLLP server and HL7 feed against real peers on loopback: ``mllp_send`` from the ``hl7``
package with the public sample messages, and a raw socket for what that client cannot do."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy import text as sql_text

from node.feeds.hl7feed import HL7Feed
from node.feeds.mllp import CR, EB, SB, Frame, FrameReader, MllpServer, OversizedFrame
from node.refusals import RefusalAudit
from storage.schema import Report

ORU = (
    b"MSH|^~\\&|RIS|HOSP|CXR|NODE|20240301101500||ORU^R01|%s|P|%s\r"
    b"PID|1||P123^^^HOSP^MR\r"
    b"OBR|1|PL1|ACC1|71046^XR CHEST 2V|||20240301093000||||||||||||||||||F\r"
    b"OBX|1|TX|||%s||||||F\r"
)


def oru(message_id: str, text: bytes = b"No acute disease.", version: bytes = b"2.5.1") -> bytes:
    return ORU % (message_id.encode(), version, text)


def rows(db) -> list[Report]:
    with db.transaction() as session:
        return list(session.scalars(select(Report).order_by(Report.id)))


def count_rows(db) -> int:
    with db.transaction() as session:
        return session.scalar(select(func.count()).select_from(Report))


# --- the public samples through mllp_send ---------------------------------------------------

DCM4CHE_EXPECTED = {
    "ADT^A31-UpdatePersonInfo-Veterinary.hl7": ("AE", "200"),
    "ADT^A31-UpdatePersonInfo.hl7": ("AE", "200"),
    "ADT^A40-PatientMerge.hl7": ("AE", "200"),
    "ADT^A47-ChangePatientID.hl7": ("AE", "200"),
    "OMG^O19-GeneralClinicalOrder-Eyecare.hl7": ("AE", "200"),
    "OMI^O23-ImagingOrder.hl7": ("AA", None),
    "ORM^O01-GeneralOrder.hl7": ("AA", None),  # says OMI^O23 in MSH-9: an imaging order
    "ORU^R01-CDA.hl7": ("AE", "101"),  # report only as an embedded CDA document
    "ORU^R01-PDF.hl7": ("AE", "101"),  # report only as a base64 PDF
    "SIU^S12-NewAppointmentBooking.hl7": ("AE", "200"),
}


def test_dcm4che_samples_get_the_expected_ack_and_orders_are_stored(
    hl7_server, mllp_send, shared_data, db, audited
):
    folder = shared_data / "hl7-dcm4che-testdata"
    names = sorted(DCM4CHE_EXPECTED)
    acks = mllp_send(hl7_server, [(folder / n).read_bytes() for n in names])

    assert [(a.code, a.error_code) for a in acks] == [DCM4CHE_EXPECTED[n] for n in names]
    control_ids = [(folder / n).read_bytes().split(b"\r")[0].split(b"|")[9].decode() for n in names]
    assert [a.acked_id for a in acks] == control_ids
    first = acks[names.index("OMI^O23-ImagingOrder.hl7")]
    # Sender and receiver swapped; version, processing id and character set mirrored.
    assert first.msh[2:6] == ["MESA_IM", "XYZ_IMAGE_MANAGER", "MESA_OF", "XYZ_RADIOLOGY"]
    assert (first.msh[8], first.msh[10], first.msh[11], first.msh[17]) == (
        "ACK^O23^ACK",
        "P",
        "2.5.1",
        "8859/1",
    )
    pdf = acks[names.index("ORU^R01-PDF.hl7")]
    assert "encapsulated" in pdf.user_message and pdf.err[2] == "OBX^1^5"

    stored = rows(db)
    assert [(r.message_id, r.kind, r.message_type) for r in stored] == [
        ("1001125", "indication", "OMI^O23"),
        ("1001126", "indication", "OMI^O23"),
    ]
    assert all(r.state == "waiting" and r.patient_id == "PID_1" for r in stored)
    actions = [e["action"] for e in audited()]
    assert sorted(actions) == sorted(["hl7.received"] * 2 + ["hl7.unusable"] * 8)
    assert all(e["actor_ip"] == "127.0.0.1" for e in audited())


FHIR_EXPECTED = {
    "MDM-T02-01.hl7": ("AE", "200"),
    "MDM-T02-03.hl7": ("AE", "200"),
    "ORM-O01-01.hl7": ("AA", None),  # UTF-8 BOM, LF segments
    # Same MSH-10 (MSG00018) and the same first order as ORM-O01-01: a duplicate.
    "ORM-O01-03.hl7": ("AA", None),
    "ORU-R01-01.hl7": ("AA", None),  # lab result; its NTE comments are its text
    "ORU-R01-RMGEAD.hl7": ("AE", "101"),  # numeric (SN) result only: no text
}


def test_fhir_converter_samples_with_bom_and_lf_are_read(
    hl7_server, mllp_send, shared_data, db, audited
):
    folder = shared_data / "hl7-fhir-converter-samples"
    names = sorted(FHIR_EXPECTED)
    acks = mllp_send(hl7_server, [(folder / n).read_bytes() for n in names])

    assert [(a.code, a.error_code) for a in acks] == [FHIR_EXPECTED[n] for n in names]
    assert [(r.message_id, r.accession) for r in rows(db)] == [
        ("MSG00018", "1201"),
        ("2.16.840.1.114222.4.3.3.5.1.2-20120314235954.325", "986"),
    ]
    assert [e["action"] for e in audited()].count("hl7.duplicate") == 1


def test_mllp_send_loose_mode_delivers_an_lf_file(hl7_server, mllp_send, shared_data, db):
    data = (shared_data / "hl7-fhir-converter-samples" / "ORU-R01-01.hl7").read_bytes()
    [ack] = mllp_send(hl7_server, [data], loose=True)
    assert ack.code == "AA" and count_rows(db) == 1


# --- duplicates, garbage, oversize -----------------------------------------------------------


def test_duplicate_control_id_is_acknowledged_and_stored_once(hl7_server, mllp_send, db, audited):
    acks = mllp_send(hl7_server, [oru("DUP-1"), oru("DUP-1")])
    assert [a.code for a in acks] == ["AA", "AA"]
    assert count_rows(db) == 1
    assert [e["action"] for e in audited()] == ["hl7.received", "hl7.duplicate"]


def test_on_stored_is_called_after_commit_for_new_reports_only(db, connect):
    calls = []
    feed = HL7Feed(db, on_stored=lambda: calls.append(count_rows(db)))
    with MllpServer(feed, "127.0.0.1", 0) as server:
        client = connect(server)
        assert [client.exchange(oru("CB-1")).code for _ in range(2)] == ["AA", "AA"]
    assert calls == [1]  # once, and the row was already visible to another session


def test_reused_control_id_with_other_content_is_refused(hl7_server, mllp_send, db):
    acks = mllp_send(hl7_server, [oru("ID-9"), oru("ID-9", b"Right lower lobe pneumonia.")])
    assert [(a.code, a.error_code) for a in acks] == [("AA", None), ("AE", "205")]
    assert [r.text for r in rows(db)] == ["No acute disease."]


def test_garbage_is_rejected_and_the_connection_stays_usable(raw_client, db, audited):
    ack = raw_client.exchange(b"\x00\x01\x02 not hl7 at all")
    assert ack.code == "AR" and ack.acked_id == "" and ack.err is not None
    assert raw_client.exchange(oru("AFTER-GARBAGE")).code == "AA"
    assert [r.message_id for r in rows(db)] == ["AFTER-GARBAGE"]
    rejected = [e for e in audited() if e["action"] == "hl7.rejected"]
    assert len(rejected) == 1 and rejected[0]["actor_ip"] == "127.0.0.1"
    assert rejected[0]["detail"]["ack"] == "AR" and "MSH" in rejected[0]["detail"]["reason"]


def test_bytes_invalid_in_the_declared_charset_are_rejected_with_the_msh_echoed(raw_client):
    data = oru("BAD-UTF8", "Größe".encode("latin-1")).replace(
        b"|P|2.5.1", b"|P|2.5.1||||||UNICODE UTF-8"
    )
    ack = raw_client.exchange(data)
    assert (ack.code, ack.acked_id, ack.error_code) == ("AR", "BAD-UTF8", "102")


def test_oversized_frame_is_rejected_and_the_connection_survives(
    hl7_server, raw_client, db, audited
):
    big = oru("TOO-BIG", b"x" * (hl7_server.max_frame_bytes + 10))
    ack = raw_client.exchange(big)
    assert (ack.code, ack.acked_id) == ("AR", "TOO-BIG")
    assert "exceeds" in ack.user_message
    assert raw_client.exchange(oru("SMALL")).code == "AA"
    assert [r.message_id for r in rows(db)] == ["SMALL"]
    [event] = [e for e in audited() if e["action"] == "hl7.rejected"]
    assert event["detail"]["size"] == len(big)


def test_store_failure_answers_ar_and_stores_nothing(db, audited, connect):
    def broken_sink(session, report, peer):
        raise RuntimeError("disk full")

    with MllpServer(HL7Feed(db, sink=broken_sink), "127.0.0.1", 0) as server:
        ack = connect(server).exchange(oru("NOT-STORED"))
    assert (ack.code, ack.acked_id, ack.error_code) == ("AR", "NOT-STORED", "207")
    assert count_rows(db) == 0
    assert [e["action"] for e in audited()] == ["hl7.rejected"]


def test_version_2_3_error_ack_uses_err_1_and_msa_3(raw_client):
    ack = raw_client.exchange(oru("OLD-1", b"", version=b"2.3"))
    assert (ack.code, ack.msh[11]) == ("AE", "2.3")
    assert ack.err[1].startswith("OBX^1^5^101&") and ack.raw.count(b"MSA|AE|OLD-1|no report") == 1


# --- framing ------------------------------------------------------------------------------------


def test_frames_split_across_packets_with_noise_between_them(raw_client):
    stream = b"\r\n" + SB + oru("SPLIT-1") + EB + CR + b"\n" + SB + oru("SPLIT-2") + EB + CR
    for i in range(0, len(stream), 7):
        raw_client.send(stream[i : i + 7])
        time.sleep(0.001)
    assert [raw_client.read_ack().acked_id for _ in range(2)] == ["SPLIT-1", "SPLIT-2"]


def test_abandoned_partial_frame_gets_no_ack(raw_client, db):
    raw_client.send(SB + b"MSH|^~\\&|half a mess" + SB + oru("WHOLE") + EB + CR)
    assert raw_client.read_ack().acked_id == "WHOLE"
    assert count_rows(db) == 1


def test_idle_connection_is_closed(db):
    server = MllpServer(HL7Feed(db), "127.0.0.1", 0, idle_timeout_s=0.3)
    with server, socket.create_connection(server.address, timeout=5) as sock:
        assert sock.recv(10) == b""  # closed by the server after 0.3 s of silence


def test_stop_does_not_wait_for_idle_clients(db, connect):
    server = MllpServer(HL7Feed(db), "127.0.0.1", 0, idle_timeout_s=60)
    server.start()
    client = connect(server)
    assert client.exchange(oru("BEFORE-STOP")).code == "AA"
    # Waiting for the idle client would take its 60 s idle timeout; stop closes it instead.
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    stopping.join(timeout=30)
    assert not stopping.is_alive(), "stop() waited for an idle client"


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_frame_reader_cuts_frames_whatever_the_packet_size(chunk):
    reader = FrameReader(max_frame_bytes=20)
    stream = SB + b"first" + EB + CR + SB + b"y" * 50 + EB + CR + SB + b"third" + EB + CR
    frames = []
    for i in range(0, len(stream), chunk):
        frames += reader.feed(stream[i : i + chunk])
    first, oversized, third = frames
    assert first == Frame(b"first") and third == Frame(b"third")
    assert isinstance(oversized, OversizedFrame) and oversized.size == 50
    assert oversized.head.startswith(b"y" * 20)  # what had arrived when the limit was hit
    assert reader.partial == 0


def test_connections_beyond_the_limit_are_closed_and_the_open_ones_keep_working(db, connect):
    server = MllpServer(HL7Feed(db), "127.0.0.1", 0, idle_timeout_s=60, max_connections=2)
    with server:
        first, second = connect(server), connect(server)
        assert first.exchange(oru("LIMIT-1")).code == "AA"
        assert second.exchange(oru("LIMIT-2")).code == "AA"
        with socket.create_connection(server.address, timeout=30) as third:
            assert third.recv(10) == b""  # closed by the server: two already open
        assert first.exchange(oru("LIMIT-3")).code == "AA"
        first.close()

        def fresh_connection_is_served() -> bool:
            client = connect(server)
            try:
                return client.exchange(oru("LIMIT-4")).code == "AA"
            except (ConnectionError, OSError):
                time.sleep(0.1)
                return False

        # The freed slot is given back once the server thread has seen the close.
        assert any(fresh_connection_is_served() for _ in range(300))
    assert count_rows(db) == 4


# --- what the parser or the ACK builder did not expect -----------------------------------------


def test_impossible_utc_offset_in_msh_7_is_acknowledged_and_the_connection_kept(
    raw_client, db, audited
):
    # Found by fuzzing: timezone() refuses offsets of 24 h or more, and the error escaped
    # handle_frame: no ACK, no audit event, the connection dropped.
    bad_time = oru("TZ-24H").replace(b"20240301101500|", b"20240301101500+2400|", 1)
    ack = raw_client.exchange(bad_time)
    assert (ack.code, ack.acked_id) == ("AA", "TZ-24H")
    assert raw_client.exchange(oru("AFTER-TZ")).code == "AA"
    assert [r.message_id for r in rows(db)] == ["TZ-24H", "AFTER-TZ"]
    assert [e["action"] for e in audited()] == ["hl7.received", "hl7.received"]


def test_unexpected_failure_handling_a_frame_is_answered_ar_audited_and_survived(
    db, audited, connect, monkeypatch
):
    import node.feeds.hl7feed as hl7feed

    def broken(*args, **kwargs):
        raise ValueError("a bug nobody has found yet")

    # The parser and the lenient header reader both fail, as they did on the MSH-7 offset.
    monkeypatch.setattr(hl7feed, "parse_message", broken)
    monkeypatch.setattr(hl7feed, "read_header_leniently", broken)
    with MllpServer(HL7Feed(db), "127.0.0.1", 0) as server:
        client = connect(server)
        first, second = client.exchange(oru("BUG-1")), client.exchange(oru("BUG-2"))
    assert [(a.code, a.error_code) for a in (first, second)] == [("AR", "207"), ("AR", "207")]
    events = audited()
    assert [e["action"] for e in events] == ["hl7.rejected", "hl7.rejected"]
    assert events[0]["actor_ip"] == "127.0.0.1" and events[0]["detail"]["code"] == 207


# --- slow peers: frame deadline, idle clock, per-peer cap ----------------------------------------


def connect_from(server: MllpServer, source: str) -> socket.socket:
    """A raw connection from another loopback address: another peer, as the server sees it."""
    return socket.create_connection(server.address, timeout=10, source_address=(source, 0))


def trickle_until_closed(sock: socket.socket, byte: bytes, tries: int = 100) -> bool:
    """Send one byte every 0.1 s, as a slow-loris peer does; True once the server has closed
    the connection (at most ``tries`` bytes)."""
    sock.settimeout(0.1)
    for _ in range(tries):
        try:
            sock.sendall(byte)
            if sock.recv(10) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def wait_for(condition, tries: int = 200):
    for _ in range(tries):
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    return condition()


def test_slow_loris_peer_is_capped_and_closed_and_others_still_get_their_ack(db, audited, connect):
    refusals = RefusalAudit(db)
    server = MllpServer(
        HL7Feed(db),
        "127.0.0.1",
        0,
        idle_timeout_s=30,
        frame_timeout_s=0.5,
        max_connections=4,
        max_connections_per_peer=2,
        on_refused=refusals.record,
    )
    with server:
        lorises = [connect_from(server, "127.0.0.2") for _ in range(2)]
        for loris in lorises:
            loris.sendall(SB + b"MSH|^~\\&|")
        with connect_from(server, "127.0.0.2") as third:
            assert third.recv(10) == b""  # closed at once: the peer holds its two
        assert connect(server).exchange(oru("WHILE-LORIS")).code == "AA"
        # One byte every 0.1 s would keep an idle clock at bay forever; the frame's does not.
        assert all(trickle_until_closed(loris, b"x") for loris in lorises)
        for loris in lorises:
            loris.close()
        assert connect(server).exchange(oru("AFTER-LORIS")).code == "AA"
    refusals.flush()
    events = audited()
    refused = [e for e in events if e["action"] == "hl7.connection_refused"]
    assert [(e["actor_ip"], e["detail"]["reason"]) for e in refused] == [
        ("127.0.0.2", "per-peer connection limit reached")
    ]
    dropped = [e for e in events if e["action"] == "hl7.frame_unterminated"]
    assert {e["actor_ip"] for e in dropped} == {"127.0.0.2"}
    assert sum(e["detail"]["count"] for e in dropped) == 2 and len(dropped) == 2
    assert "within 0.5 s" in dropped[0]["detail"]["reason"]
    assert [r.message_id for r in rows(db)] == ["WHILE-LORIS", "AFTER-LORIS"]


def test_a_refusal_at_the_total_limit_names_the_peers_holding_the_connections(db, audited):
    refusals = RefusalAudit(db)
    server = MllpServer(
        HL7Feed(db),
        "127.0.0.1",
        0,
        idle_timeout_s=30,
        max_connections=3,
        max_connections_per_peer=2,
        on_refused=refusals.record,
    )
    with server:
        holders = [connect_from(server, source) for source in ("127.0.0.2",) * 2 + ("127.0.0.3",)]
        try:
            with connect_from(server, "127.0.0.1") as refused:
                assert refused.recv(10) == b""  # closed at once: the feed is full
        finally:
            for sock in holders:
                sock.close()
    (event,) = [e for e in audited() if e["action"] == "hl7.connection_refused"]
    assert event["actor_ip"] == "127.0.0.1"  # the refused sender, and who holds the feed:
    assert event["detail"]["reason"] == "connection limit reached"
    assert event["detail"]["limit"] == 3
    assert event["detail"]["holders"] == [
        {"address": "127.0.0.2", "connections": 2},
        {"address": "127.0.0.3", "connections": 1},
    ]


def test_bytes_between_frames_do_not_keep_a_connection_from_idling_out(db):
    server = MllpServer(HL7Feed(db), "127.0.0.1", 0, idle_timeout_s=0.5, frame_timeout_s=30)
    with server, connect_from(server, "127.0.0.3") as sock:
        assert trickle_until_closed(sock, b"\r")


def test_connection_closed_inside_a_frame_is_audited(db, audited):
    server = MllpServer(HL7Feed(db), "127.0.0.1", 0, on_refused=RefusalAudit(db).record)
    with server:
        with connect_from(server, "127.0.0.4") as sock:
            sock.sendall(SB + oru("HALF")[:40])

        def dropped():
            return [e for e in audited() if e["action"] == "hl7.frame_unterminated"]

        (event,) = wait_for(dropped)
    assert event["actor_ip"] == "127.0.0.4" and event["detail"]["bytes"] == 40
    assert event["detail"]["reason"] == "connection closed inside the frame"
    assert count_rows(db) == 0


# --- what the application log gets ----------------------------------------------------------


def test_a_message_without_msh_is_not_quoted_in_the_application_log(db, audited, caplog):
    garbage = b"PID|1||PAT-SECRET-1^^^HOSP^MR\rOBX|1|TX|||No acute disease.||||||F\r"
    with caplog.at_level(logging.DEBUG):
        ack = HL7Feed(db).handle_frame(garbage, ("127.0.0.1", 40000))
    assert b"|AR|" in ack or b"MSA|AR" in ack
    assert "SECRET" not in caplog.text and "no MSH segment at the start" in caplog.text
    [event] = [e for e in audited() if e["action"] == "hl7.rejected"]
    assert "PAT-SECRET-1" in event["detail"]["reason"]  # the audit log keeps the quote


def test_a_database_error_keeps_report_text_and_identifiers_out_of_the_application_log(
    db, audited, caplog
):
    # A real failure of the real database: a trigger refuses every report row, and SQLAlchemy's
    # error quotes the INSERT's parameters (report text, patient ID, accession).
    with db.transaction() as session:
        session.execute(
            sql_text(
                "CREATE TRIGGER refuse_reports BEFORE INSERT ON reports "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    message = oru("DB-1", b"Opacity SECRET-3 noted.").replace(b"P123", b"PAT-SECRET-2")
    with caplog.at_level(logging.DEBUG):
        ack = HL7Feed(db).handle_frame(message, ("127.0.0.1", 40000))
    assert b"MSA|AR|DB-1" in ack and count_rows(db) == 0
    assert "SECRET" not in caplog.text
    assert "IntegrityError (sqlite3.IntegrityError)" in caplog.text
    [event] = [e for e in audited() if e["action"] == "hl7.rejected"]
    assert "refused by the test" in event["detail"]["error"]  # the detail is audited
