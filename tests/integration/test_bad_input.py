"""Bad input never kills the node: a corpus of malformed DICOM and HL7 made from the real files,
sent to a running node; each input is answered and audited, and the node goes on working."""

from __future__ import annotations

import hashlib
import socket
import warnings
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from node.orthanc import free_port
from support.mutations import dicom_mutants, hl7_mutants
from support.peers import NODE_AE, results_in_orthanc, wait_for

pytestmark = pytest.mark.integration

DICOM_PER_SOURCE = 70  # x 3 sources = 210 DICOM inputs
HL7_COUNT = 100


def sources(shared_data: Path) -> list[Path]:
    return [
        shared_data / "highdicom-dx-image" / "dx_image.dcm",
        shared_data / "barre-cr-mono1-10-chest" / "CR-MONO1-10-chest",
        next((shared_data / "nih-chestxray14-dicom-gcp").glob("*.dcm")),
    ]


@pytest.fixture
def raw_store(monkeypatch):
    # Stream each file's bytes as they are instead of decoding and re-encoding them, which
    # would repair (or refuse to send) the very damage under test.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def send_files(port: int, paths: list[Path]) -> dict[Path, int | None]:
    """C-STORE each file as it is on disk (pynetdicom streams the bytes after the file meta,
    so the mutations reach the node unrepaired); reassociate after an abort."""
    statuses: dict[Path, int | None] = {}
    pending = list(paths)
    while pending:
        ae = AE(ae_title="ORTHANC")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        contexts = set()
        for path in pending[:100]:
            meta = pydicom.filereader.read_file_meta_info(path)
            contexts.add((meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID))
        for context in contexts:
            ae.add_requested_context(*context)
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        assert assoc.is_established, "the node stopped accepting associations"
        batch, pending = pending[:100], pending[100:]
        for n, path in enumerate(batch):
            status = assoc.send_c_store(path)
            statuses[path] = int(status.Status) if status and "Status" in status else None
            if not assoc.is_established:
                pending = batch[n + 1 :] + pending
                break
        if assoc.is_established:
            assoc.release()
    return statuses


def mllp_exchange(port: int, messages: list[bytes]) -> list[bytes]:
    """Send each message on one connection and read its ACK."""
    acks = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for message in messages:
            sock.sendall(b"\x0b" + message + b"\x1c\r")
            ack = b""
            while not ack.endswith(b"\x1c\r"):
                chunk = sock.recv(65536)
                assert chunk, "the MLLP listener closed the connection"
                ack += chunk
            acks.append(ack)
    return acks


def echo(port: int) -> bool:
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    ok = assoc.is_established and assoc.send_c_echo().Status == 0
    if assoc.is_established:
        assoc.release()
    return ok


def test_malformed_corpus_is_answered_audited_and_harmless(
    make_node, orthanc, shared_data, tmp_path, raw_store
):
    hl7_port = free_port()
    node = make_node(hl7_port=hl7_port)

    # Something accepted before the storm, to prove it is untouched afterwards.
    rsna = sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    before = orthanc.upload(rsna[0].read_bytes())["ParentStudy"]
    orthanc.send_study("cxrnode", before)
    wait_for(lambda: results_in_orthanc(orthanc, before, 3), 120, "the first study's results")
    spooled = {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp_path / "node-data" / "spool").rglob("*.dcm")
    }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mutants = list(dicom_mutants(sources(shared_data), DICOM_PER_SOURCE))
    paths = []
    for n, mutant in enumerate(mutants):
        path = tmp_path / "corpus" / f"{n:03d}-{mutant.kind}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(mutant.data)
        paths.append(path)
    statuses = send_files(node.port, paths)
    assert len(statuses) == len(paths)

    messages = [
        p.read_bytes() for p in sorted((shared_data / "hl7-dcm4che-testdata").glob("O*.hl7"))
    ]
    hl7 = list(hl7_mutants(messages, HL7_COUNT))
    acks = mllp_exchange(hl7_port, hl7)
    assert all(b"MSA|A" in ack for ack in acks), "every HL7 message gets AA, AE or AR"
    assert len(paths) + len(hl7) >= 300

    assert echo(node.port)

    audited = {e["sop_uid"] for e in node.audit("--limit", "0") if e["sop_uid"]}
    unaudited = [m.kind for m in mutants if m.sop_uid not in audited]
    assert unaudited == [], f"DICOM inputs without an audit event: {unaudited}"
    hl7_events = [e for e in node.audit("--action", "hl7.", "--limit", "0")]
    assert len(hl7_events) >= len(hl7)

    # Still working: a good study goes through after the corpus.
    after = orthanc.upload(rsna[1].read_bytes())["ParentStudy"]
    orthanc.send_study("cxrnode", after)
    wait_for(lambda: results_in_orthanc(orthanc, after, 3), 600, "a good study after the corpus")
    for path, digest in spooled.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    refused = [s for s in statuses.values() if s not in (0x0000, None)]
    print(f"\ncorpus: {len(paths)} DICOM ({len(refused)} refused), {len(hl7)} HL7")
