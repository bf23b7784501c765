"""No single peer locks the storage SCP's door: silent TLS connections, half-sent association
requests and trickled ones are timed out, a peer over its cap is refused "local limit
exceeded", and each refusal is audited against the peer that caused it.

Attackers connect from 127.0.0.2, the legitimate modality from 127.0.0.1: two peers on
loopback, as the node sees them.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.config import Settings
from node.dicom.receiver import StorageSCP
from node.orthanc import free_port
from node.tls import client_context
from storage import audit
from storage.database import Database
from storage.spool import FileStore
from support.certs import Pki, make_pki
from support.peers import wait_for

ATTACKER = "127.0.0.2"
# The start of an A-ASSOCIATE-RQ (PS3.8 9.3.2) announcing 200 bytes, of which it sends 10.
PARTIAL_RQ = b"\x01\x00" + struct.pack(">L", 200) + b"\x00\x01\x00\x00"
LOCAL_LIMIT_RJ = b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x02"  # transient, provider, local limit


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def start_scp(tmp_path: Path, **overrides) -> StorageSCP:
    settings = Settings(
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        allowed_calling_aes=("MODALITY",),
        **overrides,
    )
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    scp = StorageSCP(settings, db, FileStore(tmp_path / "spool"))
    scp.start()
    return scp


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
        # The peer's connections beyond its 4 are rejected at once, "local limit exceeded"...
        answers = [sock.recv(64) for sock in attackers[4:]]
        assert answers == [LOCAL_LIMIT_RJ] * 6
        # ...so the legitimate sender still finds a slot while the 4 are held,
        assert echo(port)
        # and the 4 are closed once their A-ASSOCIATE-RQ is overdue (ARTIM, 1 s).
        assert all(closed_by_server(sock) for sock in attackers[:4])
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
