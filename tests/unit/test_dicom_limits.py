"""No single peer locks the storage SCP's door: silent TLS connections, half-sent association
requests and trickled ones, and PDUs trickled after association are timed out, a peer over
its cap is refused "local limit exceeded", and each refusal is audited against the peer that
caused it, once per peer, reason and window (a rejection at the total limit names the peers
holding the slots).

Attackers connect from 127.0.0.2, the legitimate modality from 127.0.0.1: two peers on
loopback, as the node sees them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from node.dicom.receiver import StorageSCP
from node.dicom.transport import _Deadlines
from node.tls import client_context
from storage import audit
from support.certs import Pki, make_pki
from support.peers import wait_for
from support.scp import start_scp

ATTACKER = "127.0.0.2"
# The start of an A-ASSOCIATE-RQ (PS3.8 9.3.2) announcing 200 bytes, of which it sends 10.
PARTIAL_RQ = b"\x01\x00" + struct.pack(">L", 200) + b"\x00\x01\x00\x00"
LOCAL_LIMIT_RJ = b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x02"  # transient, provider, local limit


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def stopping():
    """Stops the SCPs a test started, whatever the test did."""
    started: list[StorageSCP] = []
    yield started.append
    for scp in started:
        scp.stop()


def echo(port: int, context=None) -> bool:
    """A C-ECHO from MODALITY on 127.0.0.1, in a thread so that a frozen listener fails the
    test instead of hanging it."""
    result: list[bool] = []

    def run() -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
        tls_args = (context, "127.0.0.1") if context else None
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE", tls_args=tls_args)
        if assoc.is_established:
            result.append(assoc.send_c_echo().Status == 0)
            assoc.release()
        else:
            result.append(False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    return bool(result and result[0])


def connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes (True) or 10 s of silence (False)."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def events(scp: StorageSCP, action: str) -> list[audit.AuditEvent]:
    with scp.db.transaction() as session:
        found = audit.query(session, audit.AuditFilter(action=action, limit=None))
        session.expunge_all()
        return sorted(found, key=lambda e: e.id)


def test_silent_tcp_connection_does_not_freeze_the_tls_listener(tmp_path, pki, stopping):
    scp = start_scp(
        tmp_path,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_ca=str(pki.ca),
        tls_handshake_timeout_s=1.0,
    )
    stopping(scp)
    port = scp.settings.dicom_port
    context = client_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    with connect_from(ATTACKER, port) as silent:
        # pynetdicom's accept loop sat in this connection's handshake: every caller waited.
        assert echo(port, context)
        assert closed_by_server(silent)  # after its 1 s to handshake
    (event,) = wait_for(lambda: events(scp, "association.tls_failed"), 10, "tls_failed")
    assert event.actor_ip == ATTACKER and event.outcome == "failure"
    assert event.detail["reason"] == "no TLS handshake within 1 s"
    assert event.detail["count"] == 1
    assert events(scp, "association.rejected") == []


def test_half_sent_association_requests_do_not_hold_the_slots(tmp_path, stopping):
    scp = start_scp(tmp_path, dicom_acse_timeout_s=1.0, dicom_max_associations_per_peer=4)
    stopping(scp)
    port = scp.settings.dicom_port
    attackers = [connect_from(ATTACKER, port) for _ in range(10)]
    try:
        for sock in attackers:
            sock.sendall(PARTIAL_RQ)
        # The legitimate sender still finds a slot while the peer's 4 are held,
        assert echo(port)
        # the peer's connections beyond its 4 were rejected "local limit exceeded" (which 4
        # were admitted depends on the order their threads ran), and the 4 admitted ones are
        # closed once their A-ASSOCIATE-RQ is overdue (ARTIM, 1 s), without an answer.
        answers = []
        for sock in attackers:
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(64):
                    answer += chunk
            answers.append(answer)
        assert sorted(answers) == sorted([LOCAL_LIMIT_RJ] * 6 + [b""] * 4)
    finally:
        for sock in attackers:
            sock.close()
    assert echo(port)
    scp.stop()  # flushes the refusals counted in the window
    rejected = events(scp, "association.rejected")
    assert {e.actor_ip for e in rejected} == {ATTACKER}  # none against the modality
    assert sum(e.detail["count"] for e in rejected) == 6 and len(rejected) == 2
    assert rejected[0].detail["limit"] == 4
    assert "per-peer limit" in rejected[0].detail["reason"]


def test_association_request_trickled_byte_by_byte_is_cut_at_the_artim_deadline(tmp_path, stopping):
    scp = start_scp(tmp_path, dicom_acse_timeout_s=1.0, dicom_network_timeout_s=30.0)
    stopping(scp)
    with connect_from(ATTACKER, scp.settings.dicom_port) as sock:
        sock.settimeout(0.2)
        closed = False
        # One byte every 0.2 s never lets a 30 s read timeout expire; the deadline does.
        for byte in PARTIAL_RQ + b"\x00" * 100:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(64) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed
    assert echo(scp.settings.dicom_port)


def test_timeouts_and_limits_reach_pynetdicom(tmp_path, stopping):
    scp = start_scp(
        tmp_path,
        dicom_max_associations=6,
        dicom_acse_timeout_s=7.0,
        dicom_dimse_timeout_s=8.0,
        dicom_network_timeout_s=9.0,
    )
    stopping(scp)
    ae = scp.ae
    assert (ae.maximum_associations, ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (
        6,
        7.0,
        8.0,
        9.0,
    )


def associate_from(source: str, port: int, calling_ae: str = "MODALITY", called_ae="CXRNODE"):
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    # Generous: on a loaded machine a 5 s answer timeout turned a rejection into an abort.
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 30
    return ae.associate("127.0.0.1", port, ae_title=called_ae, bind_address=(source, 0))


def test_a_loop_of_bad_requests_is_one_rejection_row_per_peer_reason_and_window(tmp_path, stopping):
    scp = start_scp(tmp_path)
    stopping(scp)
    port = scp.settings.dicom_port
    for _ in range(12):
        assert associate_from(ATTACKER, port, calling_ae="STRANGER").is_rejected
    for _ in range(5):
        assert associate_from(ATTACKER, port, called_ae="OTHERNODE").is_rejected
    # The first of each reason is there at once, as the peer reads its rejection...
    rejected = events(scp, "association.rejected")
    assert [(e.detail["reason"], e.detail["count"]) for e in rejected] == [
        ("calling AE title not allowed", 1),
        ("called AE title not recognised", 1),
    ]
    assert rejected[0].actor_ae == "STRANGER" and rejected[0].actor_ip == ATTACKER
    assert echo(port)  # the modality is not refused for the attacker's requests
    scp.stop()  # ...and the rest are counted when the window ends (here: the listener stops)
    rejected = events(scp, "association.rejected")
    assert len(rejected) == 4
    counts = Counter()
    for event in rejected:
        counts[event.detail["reason"]] += event.detail["count"]
    assert counts == {"calling AE title not allowed": 12, "called AE title not recognised": 5}


def test_a_rejection_at_the_total_limit_names_the_peers_holding_the_slots(tmp_path, stopping):
    scp = start_scp(tmp_path, dicom_max_associations=3, dicom_max_associations_per_peer=2)
    stopping(scp)
    port = scp.settings.dicom_port
    held = [associate_from(source, port) for source in (ATTACKER, ATTACKER, "127.0.0.3")]
    try:
        assert all(assoc.is_established for assoc in held)
        refused = associate_from("127.0.0.1", port)
        assert refused.is_rejected
        rejection = refused.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
    finally:
        for assoc in held:
            assoc.release()
    (event,) = events(scp, "association.rejected")
    assert event.actor_ip == "127.0.0.1"  # the refused modality, and who holds the door:
    assert event.detail["reason"] == "total association limit reached"
    assert event.detail["limit"] == 3
    assert event.detail["holders"] == [
        {"address": ATTACKER, "associations": 2},
        {"address": "127.0.0.3", "associations": 1},
    ]


def associate_raw(sock: socket.socket) -> bytes:
    """A real A-ASSOCIATE exchange on a raw socket (MODALITY proposing Verification); return
    the node's answer PDU."""
    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title = "MODALITY"
    request.called_ae_title = "CXRNODE"
    context = build_context(Verification)
    context.context_id = 1
    request.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    request.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(request)
    sock.sendall(pdu.encode())
    header = sock.recv(6, socket.MSG_WAITALL)
    (length,) = struct.unpack(">L", header[2:])
    return header + sock.recv(length, socket.MSG_WAITALL)


def test_a_pdu_trickled_after_association_is_cut_at_the_pdu_deadline(tmp_path, stopping):
    scp = start_scp(tmp_path, dicom_pdu_timeout_s=1.0, dicom_network_timeout_s=30.0)
    stopping(scp)
    port = scp.settings.dicom_port
    with connect_from(ATTACKER, port) as sock:
        assert associate_raw(sock)[0] == 0x02  # A-ASSOCIATE-AC: associated
        # A P-DATA-TF announcing 200 bytes, then one byte every 0.2 s: never a 30 s silence
        # for the read timeout, so only the whole-PDU deadline (1 s) ends it.
        trickle = b"\x04\x00" + struct.pack(">L", 200) + b"\x00" * 200
        sock.settimeout(0.2)
        closed = False
        for byte in trickle[:100]:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(64) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed
    assert echo(port)  # the slot is free, the listener answers
    (event,) = wait_for(lambda: events(scp, "association.pdu_timeout"), 10, "pdu_timeout")
    assert (event.actor_ip, event.actor_ae, event.outcome) == (ATTACKER, "MODALITY", "failure")
    assert event.detail["reason"] == "PDU not complete within 1 s of its first byte"
    assert event.detail["count"] == 1


def test_pdus_sent_in_time_are_not_cut(tmp_path, stopping):
    scp = start_scp(tmp_path, dicom_pdu_timeout_s=1.0)
    stopping(scp)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.settings.dicom_port, ae_title="CXRNODE")
    try:
        for _ in range(3):  # idle between PDUs longer than the PDU deadline is not "overdue"
            assert assoc.send_c_echo().Status == 0
            time.sleep(1.2)
    finally:
        assoc.release()
    assert events(scp, "association.pdu_timeout") == []


def test_deadlines_discarded_in_time_do_not_pile_up():
    # One deadline per PDU read: a long study must not leave one heap entry per PDU behind.
    deadlines = _Deadlines()
    with socket.socket() as sock:
        keys = [object() for _ in range(3)]
        for n in range(20_000):
            key = keys[n % 3]
            deadlines.add(key, time.monotonic() + 3600, sock)
            deadlines.discard(key)
        deadlines.add(keys[0], time.monotonic() + 3600, sock)
    assert len(deadlines._due) <= 2 * 1 + 1024 + 1
    assert not deadlines.expired(keys[0])


# A-ABORT from the service provider, "invalid PDU parameter value" (PS3.8 9.3.8).
INVALID_PDU_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
MiB = 1024 * 1024


def resident_bytes() -> int:
    """This process's resident set (the SCP runs in it), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def push(sock: socket.socket, total: int) -> int:
    """Send up to ``total`` bytes in 1 MiB chunks; return how many went out before the
    connection broke (or 2 s passed without progress)."""
    chunk = b"\x00" * MiB
    sock.settimeout(2)
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    return sent


def test_a_p_data_declaring_3_gib_is_aborted_before_its_body_is_read(tmp_path, stopping):
    # Long PDU and read timeouts: only the declared length can end this connection.
    scp = start_scp(tmp_path, dicom_pdu_timeout_s=60.0, dicom_network_timeout_s=60.0)
    stopping(scp)
    port = scp.settings.dicom_port
    assert scp.ae.maximum_pdu_size == 4 * MiB  # announced in the A-ASSOCIATE-AC
    before = resident_bytes()
    with connect_from(ATTACKER, port) as sock:
        assert associate_raw(sock)[0] == 0x02
        sock.sendall(b"\x04\x00" + struct.pack(">L", 3 * 1024 * MiB))  # the header only
        assert sock.recv(64) == INVALID_PDU_ABORT  # at once, before any of the body
        assert closed_by_server(sock)
        # The node reads no more: 64 MiB of body do not get through (pynetdicom read them all
        # into memory, and went on waiting for the rest of the 3 GiB).
        assert push(sock, 64 * MiB) < 16 * MiB
    assert resident_bytes() - before < 16 * MiB
    assert echo(port)  # a normal association still works
    (event,) = events(scp, "association.pdu_too_large")  # written before the A-ABORT
    assert (event.actor_ip, event.actor_ae, event.outcome) == (ATTACKER, "MODALITY", "failure")
    assert event.detail["pdu_type"] == "P-DATA-TF"
    assert (event.detail["declared_bytes"], event.detail["limit_bytes"]) == (
        3 * 1024 * MiB,
        4 * MiB,
    )
    assert event.detail["count"] == 1


def test_an_association_request_declaring_more_than_256_kib_is_aborted(tmp_path, stopping):
    scp = start_scp(tmp_path, dicom_acse_timeout_s=60.0, dicom_network_timeout_s=60.0)
    stopping(scp)
    port = scp.settings.dicom_port
    for _ in range(2):  # twice in one window: one row, counted
        with connect_from(ATTACKER, port) as sock:
            sock.sendall(b"\x01\x00" + struct.pack(">L", 256 * 1024 + 1) + b"\x00\x01")
            assert sock.recv(64) == INVALID_PDU_ABORT
            assert closed_by_server(sock)
    assert echo(port)
    (event,) = events(scp, "association.pdu_too_large")
    assert (event.actor_ip, event.actor_ae) == (ATTACKER, None)  # before negotiation
    assert event.detail["pdu_type"] == "A-ASSOCIATE-RQ"
    assert event.detail["limit_bytes"] == 256 * 1024
    scp.stop()
    assert sum(e.detail["count"] for e in events(scp, "association.pdu_too_large")) == 2


def test_pdus_up_to_the_announced_size_are_read(tmp_path, stopping):
    scp = start_scp(tmp_path, dicom_max_pdu_bytes=8192)
    stopping(scp)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.settings.dicom_port, ae_title="CXRNODE")
    try:
        assert assoc.acceptor.maximum_length == 8192
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    assert events(scp, "association.pdu_too_large") == []


def test_a_dimse_message_whose_fragments_never_end_is_cut_at_the_message_deadline(
    tmp_path, stopping
):
    scp = start_scp(
        tmp_path,
        dicom_message_timeout_s=1.0,
        dicom_pdu_timeout_s=30.0,
        dicom_network_timeout_s=30.0,
    )
    stopping(scp)
    port = scp.settings.dicom_port
    # A complete P-DATA-TF with one command fragment (context 1, header 0x01: not the last).
    fragment = b"\x04\x00" + struct.pack(">L", 8) + struct.pack(">L", 4) + b"\x01\x01\x00\x00"
    with connect_from(ATTACKER, port) as sock:
        assert associate_raw(sock)[0] == 0x02
        sock.settimeout(0.2)
        closed = False
        # A fragment every 0.2 s: each PDU is complete at once and none is 30 s after the
        # last, so only the message deadline (1 s) ends it; 50 tries, 10 s at most.
        for _ in range(50):
            try:
                sock.sendall(fragment)
                if sock.recv(64) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed
    assert echo(port)  # the slot is free, the listener answers
    (event,) = wait_for(lambda: events(scp, "association.message_timeout"), 10, "message")
    assert (event.actor_ip, event.actor_ae, event.outcome) == (ATTACKER, "MODALITY", "failure")
    assert event.detail["reason"] == "DIMSE message not complete within 1 s of its first fragment"
    assert event.detail["count"] == 1
