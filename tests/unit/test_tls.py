"""DICOM and MLLP over TLS: the right certificate gets in, none or a stranger's does not."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.feeds.hl7feed import HL7Feed
from node.feeds.mllp import MllpServer
from node.refusals import RefusalAudit
from node.tls import client_context, server_context
from storage import audit
from storage.database import Database
from support.certs import Pki, make_pki
from support.scp import start_scp


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_scp(tmp_path: Path, pki: Pki):
    scp = start_scp(
        tmp_path, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_ca=str(pki.ca)
    )
    yield scp
    scp.stop()


def echo(port: int, context: ssl.SSLContext | None, calling_ae: str = "MODALITY") -> bool:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    tls_args = (context, "127.0.0.1") if context else None
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE", tls_args=tls_args)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status == 0


def test_dicom_tls_with_the_right_certificate_succeeds(tls_scp, pki):
    context = client_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert echo(tls_scp.settings.dicom_port, context)


def test_dicom_tls_without_a_client_certificate_fails(tls_scp, pki):
    assert not echo(tls_scp.settings.dicom_port, client_context(str(pki.ca)))


def test_dicom_tls_with_a_certificate_of_another_ca_fails(tls_scp, pki):
    context = client_context(str(pki.ca), str(pki.rogue_cert), str(pki.rogue_key))
    assert not echo(tls_scp.settings.dicom_port, context)


def test_dicom_plain_tcp_to_a_tls_listener_fails(tls_scp):
    assert not echo(tls_scp.settings.dicom_port, None)


def test_dicom_tls_unknown_ae_is_still_rejected(tls_scp, pki):
    context = client_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert not echo(tls_scp.settings.dicom_port, context, calling_ae="STRANGER")
    with tls_scp.db.transaction() as session:
        (event,) = audit.query(session, audit.AuditFilter(action="association.rejected"))
        assert event.actor_ae == "STRANGER"


def test_dcmtk_echoscu_over_tls_with_its_certificate(tls_scp, pki):
    command = [
        "echoscu",
        "-aet",
        "MODALITY",
        "-aec",
        "CXRNODE",
        "+tls",
        str(pki.client_key),
        str(pki.client_cert),
        "+cf",
        str(pki.ca),
        "127.0.0.1",
        str(tls_scp.settings.dicom_port),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("dcmtk echoscu not installed")
    assert done.returncode == 0, done.stdout + done.stderr


MESSAGE = (
    b"MSH|^~\\&|RIS|H|CXRNODE|H|20260101120000||ORU^R01|TLS1|P|2.5.1\r"
    b"PID|1||P1^^^H^MR\r"
    b"OBR|1||ACC1|71046^XR CHEST^CPT||||||||||||||||||||F\r"
    b"OBX|1|TX|IMP^Impression||No acute disease.||||||F\r"
)


@pytest.fixture
def tls_mllp(tmp_path: Path, pki: Pki):
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    context = server_context(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    server = MllpServer(HL7Feed(db), "127.0.0.1", 0, ssl_context=context, idle_timeout_s=5)
    server.start()
    yield server
    server.stop()


def mllp_exchange(port: int, context: ssl.SSLContext | None) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
    with sock:
        sock.sendall(b"\x0b" + MESSAGE + b"\x1c\r")
        return sock.recv(65536)


def test_mllp_over_tls_with_the_right_certificate_gets_aa(tls_mllp, pki):
    context = client_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    ack = mllp_exchange(tls_mllp.address[1], context)
    assert b"MSA|AA|TLS1" in ack


def test_mllp_over_tls_without_a_certificate_gets_no_ack(tls_mllp, pki):
    try:
        ack = mllp_exchange(tls_mllp.address[1], client_context(str(pki.ca)))
    except OSError:  # ssl.SSLError included: the server refused the handshake
        ack = b""
    assert b"MSA" not in ack


def test_plain_mllp_to_a_tls_listener_gets_no_ack(tls_mllp):
    try:
        ack = mllp_exchange(tls_mllp.address[1], None)
    except OSError:
        ack = b""
    assert b"MSA" not in ack


def test_silent_connection_to_the_mllp_tls_port_is_closed_and_audited(tmp_path: Path, pki: Pki):
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    context = server_context(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    server = MllpServer(
        HL7Feed(db),
        "127.0.0.1",
        0,
        ssl_context=context,
        handshake_timeout_s=0.5,
        on_refused=RefusalAudit(db).record,
    )
    with server, socket.create_connection(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""  # no handshake within 0.5 s: closed
        client = client_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        assert b"MSA|AA|TLS1" in mllp_exchange(server.address[1], client)
    with db.transaction() as session:
        (event,) = audit.query(session, audit.AuditFilter(action="hl7.tls_failed"))
        assert event.actor_ip == "127.0.0.1" and event.detail["reason"] == "timed out"
