"""The storage SCP against in-process pynetdicom peers and a real SQLite file."""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage
from sqlalchemy import select
from sqlalchemy import text as sql_text

from node.config import Destination
from node.dicom.intake import (
    CONFLICTING_DUPLICATE,
    INVALID_UID,
    MISSING_UIDS,
    PATIENT_MISMATCH,
    Received,
    status_dataset,
)
from node.dicom.receiver import StorageSCP
from node.dicom.sender import DicomSender, _pause_reactor, reactor_workaround_applies
from node.dicom.tcp import no_delay
from storage import audit
from storage.schema import Instance, Study
from support.peers import wait_for
from support.scp import start_scp


@pytest.fixture
def scp(tmp_path: Path):
    server = start_scp(tmp_path)
    yield server
    server.stop()


def associate(scp: StorageSCP, datasets, calling_ae: str = "MODALITY"):
    ae = AE(ae_title=calling_ae)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    return ae.associate("127.0.0.1", scp.settings.dicom_port, ae_title=scp.settings.ae_title)


def send(scp: StorageSCP, datasets, calling_ae: str = "MODALITY"):
    responses = send_for_responses(scp, datasets, calling_ae)
    return None if responses is None else [int(r.Status) for r in responses]


def send_for_responses(scp: StorageSCP, datasets, calling_ae: str = "MODALITY"):
    """The C-STORE response datasets (Status, ErrorComment...), None if not associated."""
    assoc = associate(scp, datasets, calling_ae)
    if not assoc.is_established:
        return None
    responses = [assoc.send_c_store(ds) for ds in datasets]
    assoc.release()
    return responses


def rsna(shared_data: Path, n: int = 0) -> pydicom.Dataset:
    paths = sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    return pydicom.dcmread(paths[n])


def events(scp: StorageSCP, action: str):
    with scp.db.transaction() as session:
        return [audit.as_dict(e) for e in audit.query(session, audit.AuditFilter(action=action))]


def test_instance_is_spooled_and_recorded_before_success(scp, shared_data):
    ds = rsna(shared_data)
    assert send(scp, [ds]) == [0x0000]
    with scp.db.transaction() as session:
        instance = session.scalar(select(Instance))
        study = session.scalar(select(Study))
        assert instance.sop_uid == ds.SOPInstanceUID and instance.processable
        assert study.study_uid == ds.StudyInstanceUID and study.state == "receiving"
        spooled = pydicom.dcmread(scp.spool.path(instance.path))
    assert spooled.SOPInstanceUID == ds.SOPInstanceUID
    assert spooled.PixelData == ds.PixelData
    assert (scp.spool.path(instance.path).stat().st_mode & 0o777) == 0o600
    assert events(scp, "instance.received")[0]["actor_ae"] == "MODALITY"


def test_same_instance_twice_is_stored_once(scp, shared_data):
    ds = rsna(shared_data)
    assert send(scp, [ds, ds]) == [0x0000, 0x0000]
    with scp.db.transaction() as session:
        assert len(session.scalars(select(Instance)).all()) == 1
    assert len(events(scp, "instance.duplicate")) == 1


def test_same_uid_with_different_content_is_refused_and_the_first_kept(scp, shared_data):
    first = rsna(shared_data)
    second = rsna(shared_data)
    second.PatientName = "SOMEONE^ELSE"
    assert send(scp, [first]) == [0x0000]
    assert send(scp, [second]) == [CONFLICTING_DUPLICATE]
    with scp.db.transaction() as session:
        kept = session.scalar(select(Instance))
        assert pydicom.dcmread(scp.spool.path(kept.path)).PatientName == first.PatientName
    assert events(scp, "instance.refused")[0]["outcome"] == "failure"


def test_unknown_calling_ae_is_rejected_and_audited(scp, shared_data):
    assert send(scp, [rsna(shared_data)], calling_ae="STRANGER") is None
    rejected = events(scp, "association.rejected")
    assert [e["actor_ae"] for e in rejected] == ["STRANGER"]


def test_non_image_instance_is_stored_and_skipped(scp, shared_data):
    ds = rsna(shared_data, 1)
    del ds.PixelData
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    assert send(scp, [ds]) == [0x0000]
    skipped = events(scp, "instance.skipped")
    assert skipped[0]["detail"]["reason"] == "no pixel data (not an image)"


def test_dataset_without_study_uid_is_refused_with_a_named_status(scp, shared_data):
    ds = rsna(shared_data, 2)
    del ds.StudyInstanceUID
    assert send(scp, [ds]) == [MISSING_UIDS]
    assert events(scp, "instance.refused")[0]["detail"]["status"] == "0xC002"


def test_ae_bound_to_another_address_is_rejected(tmp_path, shared_data):
    scp = start_scp(tmp_path, allowed_calling_aes=("MODALITY@10.99.0.1", "OTHER@127.0.0.1"))
    try:
        assert send(scp, [rsna(shared_data)], calling_ae="MODALITY") is None
        assert send(scp, [rsna(shared_data)], calling_ae="OTHER") == [0x0000]
        (rejected,) = events(scp, "association.rejected")
        assert rejected["detail"]["reason"] == "calling AE title not allowed from 127.0.0.1"
    finally:
        scp.stop()


@pytest.mark.parametrize(
    ("destination_host", "allowed", "accepted"),
    [
        ("10.99.0.2", (), False),  # the destination's AE title from another address
        ("127.0.0.1", (), True),  # from its destination host
        ("localhost", (), True),  # a host name, resolved
        ("10.99.0.2", ("PACS@127.0.0.1",), True),  # from an address the allowlist binds it to
        ("10.99.0.2", ("PACS@10.99.0.3",), False),
        ("10.99.0.2", ("PACS",), True),  # listed unbound: from anywhere, as configured
    ],
)
def test_destination_ae_title_is_bound_to_its_host_or_its_allowlist_addresses(
    tmp_path, shared_data, destination_host, allowed, accepted
):
    scp = start_scp(
        tmp_path,
        allowed_calling_aes=("MODALITY", *allowed),
        destinations=(Destination("PACS", destination_host, 104),),
    )
    try:
        statuses = send(scp, [rsna(shared_data)], calling_ae="PACS")
        assert statuses == ([0x0000] if accepted else None)
        rejected = events(scp, "association.rejected")
        assert [e["detail"]["reason"] for e in rejected] == (
            [] if accepted else ["calling AE title not allowed from 127.0.0.1"]
        )
    finally:
        scp.stop()


def test_association_calling_another_ae_title_is_rejected_and_audited(scp, shared_data):
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    assoc = ae.associate("127.0.0.1", scp.settings.dicom_port, ae_title="OTHERNODE")
    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 7)
    (rejected,) = events(scp, "association.rejected")
    assert rejected["actor_ae"] == "MODALITY"
    assert rejected["detail"] == {
        "reason": "called AE title not recognised",
        "called_ae": "OTHERNODE",
        "count": 1,  # audited once per peer, reason and window (RefusalAudit)
        "window_s": scp.settings.refusal_audit_window_s,
    }
    assert send(scp, [rsna(shared_data)]) == [0x0000]  # the node's own AE title still works


def test_full_spool_disk_refuses_associations_as_transient(tmp_path, shared_data):
    scp = start_scp(tmp_path, min_free_disk_mb=1 << 40)  # more than any disk has free
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(SecondaryCaptureImageStorage)
        assoc = ae.associate("127.0.0.1", scp.settings.dicom_port, ae_title="CXRNODE")
        assert assoc.is_rejected
        assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (2, 2)
        (rejected,) = events(scp, "association.rejected")
        assert rejected["detail"]["reason"] == "spool disk nearly full"
    finally:
        scp.stop()


def test_every_common_transfer_syntax_is_accepted_and_stored_byte_for_byte(
    scp, shared_data, monkeypatch
):
    # One real file per transfer syntax (explicit/big endian, JPEG baseline/extended/lossless,
    # JPEG-LS, JPEG 2000, RLE), each proposed and sent in its own syntax, its bytes streamed
    # as they are on disk. They are not chest images: stored, audited, skipped.
    # (The explicit little endian sample is of the retired Ultrasound Image Storage class, which
    # the node does not offer: left out.)
    from pynetdicom import AllStoragePresentationContexts, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    offered = {c.abstract_syntax for c in AllStoragePresentationContexts}
    zoo = shared_data / "orthanc-transfer-syntax-zoo-noncxr"
    metas = {
        p: pydicom.filereader.read_file_meta_info(p) for p in zoo.glob("1.2.840.10008.1.2.*.dcm")
    }
    metas = {p: m for p, m in sorted(metas.items()) if m.MediaStorageSOPClassUID in offered}
    paths = list(metas)
    syntaxes = {str(m.TransferSyntaxUID) for m in metas.values()}
    assert {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"} <= syntaxes
    assert {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5"} <= syntaxes
    for path, meta in metas.items():
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", scp.settings.dicom_port, ae_title="CXRNODE")
        assert assoc.is_established, path.name
        accepted = [c.transfer_syntax[0] for c in assoc.accepted_contexts]
        assert accepted == [meta.TransferSyntaxUID], path.name
        assert int(assoc.send_c_store(path).Status) == 0x0000, path.name
        assoc.release()
    with scp.db.transaction() as session:
        stored = {i.sop_uid: i for i in session.scalars(select(Instance))}
    for path, meta in metas.items():
        instance = stored[meta.MediaStorageSOPInstanceUID]
        assert instance.transfer_syntax == meta.TransferSyntaxUID, path.name
        spooled = pydicom.dcmread(scp.spool.path(instance.path))
        original = pydicom.dcmread(path)
        assert spooled.file_meta.TransferSyntaxUID == meta.TransferSyntaxUID
        assert spooled.PixelData == original.PixelData, path.name
    assert len(events(scp, "instance.skipped")) == len(paths)


def same_patient(ds: pydicom.Dataset, like: pydicom.Dataset) -> pydicom.Dataset:
    """Make another RSNA image an instance of ``like``'s study and patient."""
    ds.StudyInstanceUID = like.StudyInstanceUID
    ds.PatientID, ds.PatientName = like.PatientID, like.PatientName
    ds.PatientBirthDate, ds.PatientSex = like.get("PatientBirthDate", ""), like.PatientSex
    return ds


def study_rows(scp: StorageSCP, study_uid: str) -> tuple[Study, list[Instance]]:
    with scp.db.transaction() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        session.expunge(study)
        instances = list(session.scalars(select(Instance).where(Instance.study_id == study.id)))
        for instance in instances:
            session.expunge(instance)
        return study, instances


def test_second_patient_under_a_study_uid_is_refused_and_the_first_patient_kept(scp, shared_data):
    patient_a, patient_b = rsna(shared_data, 0), rsna(shared_data, 1)
    assert patient_a.PatientID != patient_b.PatientID  # two real patients
    patient_b.StudyInstanceUID = patient_a.StudyInstanceUID
    assert send(scp, [patient_a]) == [0x0000]

    (response,) = send_for_responses(scp, [patient_b])
    assert int(response.Status) == PATIENT_MISMATCH
    assert response.ErrorComment == "PatientID differs from this Study UID's patient"
    assert patient_a.PatientID not in response.ErrorComment  # the sender learns no identity
    (refused,) = events(scp, "instance.refused")
    assert refused["sop_uid"] == patient_b.SOPInstanceUID
    assert refused["patient_id"] == patient_b.PatientID
    assert refused["detail"] == {"reason": response.ErrorComment, "status": "0xC005"}
    study, instances = study_rows(scp, patient_a.StudyInstanceUID)
    assert study.patient_id == patient_a.PatientID
    assert [i.sop_uid for i in instances] == [patient_a.SOPInstanceUID]
    spooled = [pydicom.dcmread(p).PatientID for p in scp.spool.root.rglob("*.dcm")]
    assert spooled == [patient_a.PatientID]  # B's refused copy is gone

    # The study goes on working for patient A: another of A's images joins it.
    more_of_a = same_patient(rsna(shared_data, 2), patient_a)
    assert send(scp, [more_of_a]) == [0x0000]
    study, instances = study_rows(scp, patient_a.StudyInstanceUID)
    assert study.instance_count == 2 and len(instances) == 2


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("PatientName", "SOMEONE^ELSE"),
        ("PatientBirthDate", "19700101"),
        ("IssuerOfPatientID", "OTHER-HOSPITAL"),
    ],
)
def test_same_patient_id_with_another_identity_is_refused(scp, shared_data, attribute, value):
    first = rsna(shared_data, 0)
    first.PatientBirthDate, first.IssuerOfPatientID = "19800202", "HOSPITAL"
    second = same_patient(rsna(shared_data, 1), first)
    second.IssuerOfPatientID = first.IssuerOfPatientID
    setattr(second, attribute, value)
    assert send(scp, [first]) == [0x0000]
    (response,) = send_for_responses(scp, [second])
    assert int(response.Status) == PATIENT_MISMATCH
    assert response.ErrorComment == f"{attribute} differs from this Study UID's patient"
    assert len(study_rows(scp, first.StudyInstanceUID)[1]) == 1


def test_one_patients_identity_written_differently_or_left_out_is_accepted(scp, shared_data):
    first = rsna(shared_data, 0)
    first.PatientName = "Doe^John"
    spelled = same_patient(rsna(shared_data, 1), first)
    spelled.SpecificCharacterSet = "ISO_IR 192"
    spelled.PatientName = "DOE^JOHN^^^=山田^太郎"  # case, empty components, ideographic group
    unstated = same_patient(rsna(shared_data, 2), first)
    del unstated.PatientName
    first.PatientBirthDate = ""
    unstated.PatientBirthDate = "19800202"  # stated once: the study takes it from now on
    assert send(scp, [first, spelled, unstated]) == [0x0000] * 3
    study, instances = study_rows(scp, first.StudyInstanceUID)
    assert len(instances) == 3 and study.patient_birth_date == "19800202"
    born_later = same_patient(rsna(shared_data, 3), first)
    born_later.PatientBirthDate = "19990909"
    assert send(scp, [born_later]) == [PATIENT_MISMATCH]


@pytest.mark.parametrize(
    ("attribute", "uid"),
    [
        ("StudyInstanceUID", "../../x"),
        ("StudyInstanceUID", "/abs/path"),
        ("StudyInstanceUID", "1.2.840.0123"),
        ("StudyInstanceUID", "1..2"),
        ("StudyInstanceUID", "1.2." + "3" * 61),
        ("SeriesInstanceUID", "../series"),
        ("SOPInstanceUID", "1.2.3.x"),
    ],
)
def test_invalid_uid_is_refused_audited_and_never_stored(scp, shared_data, attribute, uid):
    ds = rsna(shared_data)
    with warnings.catch_warnings():  # pydicom warns of the very values under test
        warnings.simplefilter("ignore")
        setattr(ds, attribute, uid)
        if attribute == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = uid
        (response,) = send_for_responses(scp, [ds])
    assert int(response.Status) == INVALID_UID
    assert response.ErrorComment.startswith(f"{attribute} is not a valid UID (")
    (refused,) = events(scp, "instance.refused")
    assert refused["detail"]["status"] == "0xC006"
    with scp.db.transaction() as session:
        assert session.scalar(select(Instance)) is None and session.scalar(select(Study)) is None
    assert list(scp.spool.root.rglob("*")) == []


def test_error_comment_is_a_short_ascii_lo_value():
    response = status_dataset(Received(0xC001, "cannot parse: naïve\\value\n" + "x" * 100))
    assert response.Status == 0xC001
    assert response.ErrorComment == "cannot parse: na?ve?value?" + "x" * 38
    assert len(response.ErrorComment) == 64


def completed_at(scp: StorageSCP, study_uid: str):
    with scp.db.transaction() as session:
        return session.scalar(select(Study.completed_at).where(Study.study_uid == study_uid))


def test_released_association_completes_its_studies(tmp_path, shared_data):
    woken = threading.Event()
    scp = start_scp(tmp_path, on_complete=woken.set)
    try:
        first, second = rsna(shared_data, 0), rsna(shared_data, 1)
        assert send(scp, [first, second]) == [0x0000, 0x0000]
        assert woken.wait(10)
        complete = events(scp, "study.complete")
        studies = {first.StudyInstanceUID, second.StudyInstanceUID}
        assert {e["study_uid"] for e in complete} == studies
        assert [e["detail"]["instances"] for e in complete] == [1, 1]
        assert complete[0]["actor_ae"] == "MODALITY"
        assert completed_at(scp, first.StudyInstanceUID) is not None
    finally:
        scp.stop()


def test_aborted_association_completes_nothing(scp, shared_data):
    ds = rsna(shared_data)
    assoc = associate(scp, [ds])
    assert int(assoc.send_c_store(ds).Status) == 0x0000
    assoc.abort()
    wait_for(lambda: not scp._sent_by, 10, "the aborted association to be forgotten")
    assert events(scp, "study.complete") == []
    assert completed_at(scp, ds.StudyInstanceUID) is None


def test_study_sent_over_two_open_associations_completes_when_the_last_is_released(
    scp, shared_data
):
    ds, other = rsna(shared_data, 0), rsna(shared_data, 1)
    same_patient(other, ds)  # one study, two senders at once
    first, second = associate(scp, [ds]), associate(scp, [other])
    assert int(first.send_c_store(ds).Status) == 0x0000
    assert int(second.send_c_store(other).Status) == 0x0000
    first.release()
    wait_for(lambda: len(scp._sent_by) == 1, 10, "the first association to be forgotten")
    assert completed_at(scp, ds.StudyInstanceUID) is None
    second.release()
    wait_for(lambda: events(scp, "study.complete"), 10, "study.complete")
    assert completed_at(scp, ds.StudyInstanceUID) is not None


def test_release_completes_nothing_when_turned_off(tmp_path, shared_data):
    scp = start_scp(tmp_path, complete_on_release=False)
    try:
        ds = rsna(shared_data)
        assert send(scp, [ds]) == [0x0000]
        wait_for(lambda: not scp._sent_by, 10, "the association to be forgotten")
        assert events(scp, "study.complete") == []
        assert completed_at(scp, ds.StudyInstanceUID) is None
    finally:
        scp.stop()


def test_both_ends_of_an_association_turn_nagle_off(scp, shared_data):
    ds = rsna(shared_data)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(
        "127.0.0.1",
        scp.settings.dicom_port,
        ae_title=scp.settings.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],  # as the node's sender associates
    )
    try:
        assert assoc.is_established
        (acceptor,) = scp.ae.active_associations
        for end in (assoc, acceptor):
            assert end.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        assoc.release()


def test_the_senders_reactor_is_parked_before_each_request(scp, shared_data):
    # The workaround for pynetdicom's pause race (node.dicom.sender._pause_reactor) relies on
    # pynetdicom internals: this fails first if an upgrade changes them.
    ds = rsna(shared_data)
    assoc = associate(scp, [ds])
    try:
        for _ in range(20):
            _pause_reactor(assoc)
            parked_for = time.monotonic() + 0.01
            while time.monotonic() < parked_for:
                assert assoc._is_paused and not assoc._reactor_checkpoint.is_set()
            assert int(assoc.send_c_store(ds).Status) == 0x0000
            assert assoc._reactor_checkpoint.is_set()  # send_c_store let it run again
    finally:
        assoc.release()


def test_the_reactor_workaround_is_used_only_on_the_releases_it_is_tested_on():
    assert reactor_workaround_applies("3.0.4") and reactor_workaround_applies("3.0.0")
    for other in ("3.1.0", "3.1.0.dev0", "4.0.0", "2.1.1", "not-a-version", ""):
        assert not reactor_workaround_applies(other), other
    # pyproject.toml bounds pynetdicom to those releases: the installed one is one of them.
    assert DicomSender("CXRNODE").parks_reactor


def test_on_another_pynetdicom_release_the_sender_warns_and_uses_pynetdicoms_own_pause(
    scp, shared_data, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    sender = DicomSender("MODALITY")
    assert not sender.parks_reactor
    assert "pynetdicom 3.1.0 is not a release the C-STORE reactor workaround" in caplog.text
    paths = []
    for n in range(3):
        path = tmp_path / f"{n}.dcm"
        rsna(shared_data, n).save_as(path, enforce_file_format=True)
        paths.append(path)
    destination = Destination(scp.settings.ae_title, "127.0.0.1", scp.settings.dicom_port)
    assert [d.ok for d in sender.send(destination, paths)] == [True, True, True]
    assert len(events(scp, "instance.received")) == 3


def test_a_bad_uid_is_refused_without_pydicom_logging_it(scp, shared_data, caplog):
    ds = rsna(shared_data)
    with pydicom.config.disable_value_validation():  # the sender's side may set it quietly
        ds.StudyInstanceUID = "1.2.840.SECRET.7"
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="pynetdicom")  # as the node sets it (node.cli)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert send(scp, [ds]) == [INVALID_UID]
    # pydicom's reading check logged and warned "Invalid value for VR UI: '<the UID>'".
    assert "SECRET" not in caplog.text
    assert not [w for w in warned if "SECRET" in str(w.message)]
    assert events(scp, "instance.refused")[0]["detail"]["status"] == "0xC006"


def test_a_database_error_keeps_identifiers_out_of_the_application_log(scp, shared_data, caplog):
    # A real failure of the real database where the released study is marked complete: the
    # error's text would quote the audit row's parameters (Study UID, patient ID, accession).
    with scp.db.transaction() as session:
        session.execute(
            sql_text(
                "CREATE TRIGGER refuse_complete BEFORE INSERT ON audit_events "
                "WHEN NEW.action = 'study.complete' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    ds = rsna(shared_data)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="pynetdicom")  # as the node sets it (node.cli)
    assert send(scp, [ds]) == [0x0000]
    wait_for(lambda: "could not mark" in caplog.text, 10, "the failure to be logged")
    for identifier in (ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID):
        assert identifier not in caplog.text
    assert "IntegrityError (sqlite3.IntegrityError)" in caplog.text
