"""Decompression bombs, lying Pixel Data and oversized studies are refused at C-STORE, with a
0xCxxx/0xA7xx status, an ErrorComment and an ``instance.refused`` event, over a real pynetdicom
association on loopback. The files are built small: nothing here allocates what they declare."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)
from pynetdicom import AE
from sqlalchemy import func, select

from models.pixel_limits import (
    PixelLimitError,
    check_deflated_file,
    codestream_shape,
    inflated_size_at_most,
)
from models.preprocess import decode_pixels
from node.dicom.limits import (
    PIXEL_DATA_TRUNCATED,
    STUDY_INSTANCE_CAP,
    TOO_LARGE_DECODED,
    TOO_LARGE_INFLATED,
)
from node.dicom.receiver import StorageSCP
from storage import audit
from storage.schema import Instance
from support.scp import start_scp

MIB = 1024 * 1024
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def scp(tmp_path: Path):
    server = start_scp(tmp_path, max_decoded_mb=64)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def send_files_as_they_are(monkeypatch):
    """A file is sent as its bytes, not read and re-encoded by the sending pynetdicom (which
    would inflate a bomb on the sender's side)."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)


def store(scp: StorageSCP, what: pydicom.Dataset | Path, sop_class: str, syntax: str) -> Dataset:
    """C-STORE a dataset, or a file as it is on disk."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", scp.settings.dicom_port, ae_title=scp.settings.ae_title)
    assert assoc.is_established
    try:
        return assoc.send_c_store(what)
    finally:
        assoc.release()


def assert_refused(scp: StorageSCP, response: Dataset, status: int) -> dict:
    assert int(response.Status) == status
    assert response.ErrorComment
    with scp.db.transaction() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0
        (event,) = audit.query(session, audit.AuditFilter(action="instance.refused"))
        refused = audit.as_dict(event)
    assert refused["outcome"] == "failure" and refused["detail"]["status"] == f"0x{status:04X}"
    assert not list(scp.spool.root.rglob("*.dcm"))
    return refused


def image_header(rows: int, columns: int, bits: int = 8) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SC_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "LIMITS"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def explicit_le(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def dicom_file(path: Path, ds: Dataset, syntax: str, body: bytes) -> Path:
    """Preamble, File Meta for ``ds`` in ``syntax``, then ``body`` as the encoded dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    path.write_bytes(fp.getvalue() + body)
    return path


def jpeg_ls_bomb(header_rows: int) -> pydicom.Dataset:
    """A real 64 x 64 JPEG-LS image whose codestream then declares 20000 x 20000 (a few
    hundred bytes), in a dataset whose header says ``header_rows`` square."""
    ds = image_header(64, 64)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(JPEGLSLossless, np.zeros((64, 64), dtype=np.uint8), encoding_plugin="pyjpegls")
    data = bytearray(ds.PixelData)
    sof = data.index(b"\xff\xf7")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    ds.PixelData = bytes(data)
    ds.Rows = ds.Columns = header_rows
    return ds


@pytest.mark.parametrize("header_rows", [20000, 64], ids=["header says so", "codestream only"])
def test_jpeg_ls_declaring_20000_square_is_refused_before_decoding(scp, header_rows):
    bomb = jpeg_ls_bomb(header_rows)
    assert len(bomb.PixelData) < 4096
    response = store(scp, bomb, SC_IMAGE, JPEGLSLossless)
    refused = assert_refused(scp, response, TOO_LARGE_DECODED)
    assert "over the 64 MiB limit" in refused["detail"]["reason"]
    # The worker checks again before it decodes (a file spooled before the limit existed).
    with pytest.raises(PixelLimitError):
        decode_pixels(bomb, max_bytes=64 * MIB)


def zero_bomb_stream(header: bytes, inflated_zeros: int) -> bytes:
    """A raw deflate stream of ``header`` then ``inflated_zeros`` zero bytes, built from one
    compressed MiB repeated: after a full flush, the same input compresses to the same bytes."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflater.compress(header) + deflater.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(MIB)
    chunk = deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH)
    assert deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH) == chunk
    return head + chunk * (inflated_zeros // MIB) + deflater.flush(zlib.Z_FINISH)


def deflate_bomb(tmp_path: Path, inflated: int) -> tuple[Path, Dataset]:
    """A deflated dataset: a small image, then a private OB element of ``inflated`` zeros."""
    ds = image_header(16, 16)
    ds.PixelData = bytes(256)
    ds.add_new(0x00090010, "LO", "CXRNODE TEST")
    head = explicit_le(ds)
    # (0009,1010) OB, declared length: the zeros follow in the stream.
    element = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated)
    # Private elements sort before Pixel Data: rebuild in tag order.
    pixel_at = head.index(struct.pack("<HH", 0x7FE0, 0x0010))
    body = head[:pixel_at] + element
    stream = zero_bomb_stream(body, inflated)  # the pixel data after it is never reached
    return dicom_file(tmp_path / "bomb.dcm", ds, DeflatedExplicitVRLittleEndian, stream), ds


def test_a_deflated_dataset_inflating_to_2_gib_is_refused_without_inflating_it(scp, tmp_path):
    path, ds = deflate_bomb(tmp_path, 2048 * MIB)
    assert path.stat().st_size < 4 * MIB
    response = store(scp, path, SC_IMAGE, DeflatedExplicitVRLittleEndian)
    refused = assert_refused(scp, response, TOO_LARGE_INFLATED)
    assert "inflates past the 64 MiB limit" in refused["detail"]["reason"]
    # Spooled before the limit existed: the worker checks before pydicom opens it.
    with pytest.raises(PixelLimitError):
        check_deflated_file(path, 64 * MIB)


def test_inflating_stops_at_the_limit_with_bounded_memory():
    stream = zero_bomb_stream(b"", 2048 * MIB)
    tracemalloc.start()
    try:
        with pytest.raises(PixelLimitError):
            inflated_size_at_most(stream, 256 * MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB
    assert inflated_size_at_most(zero_bomb_stream(b"", 4 * MIB), 8 * MIB) == 4 * MIB


def native_file(tmp_path: Path, ds: Dataset, declared: int, present: int) -> Path:
    """Explicit VR little endian with a Pixel Data element declaring ``declared`` bytes and
    holding ``present``."""
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, declared)
    body = explicit_le(ds) + element + bytes(present)
    return dicom_file(tmp_path / "native.dcm", ds, ExplicitVRLittleEndian, body)


def test_pixel_data_declaring_2_gib_with_1_kib_present_is_refused(scp, tmp_path):
    path = native_file(tmp_path, image_header(512, 512, bits=16), 2**31 - 2, 1024)
    response = store(scp, path, SC_IMAGE, ExplicitVRLittleEndian)
    refused = assert_refused(scp, response, PIXEL_DATA_TRUNCATED)
    assert refused["detail"]["reason"] == "PixelData declares 2147483646 bytes, 1024 present"


def test_pixel_data_shorter_than_the_image_header_declares_is_refused(scp, tmp_path):
    path = native_file(tmp_path, image_header(512, 512, bits=16), 1024, 1024)
    response = store(scp, path, SC_IMAGE, ExplicitVRLittleEndian)
    refused = assert_refused(scp, response, PIXEL_DATA_TRUNCATED)
    assert "header declares 524288" in refused["detail"]["reason"]


def test_an_image_header_declaring_2_gib_is_refused(scp, tmp_path):
    path = native_file(tmp_path, image_header(32768, 32768, bits=16), 1024, 1024)
    response = store(scp, path, SC_IMAGE, ExplicitVRLittleEndian)
    assert_refused(scp, response, TOO_LARGE_DECODED)


def test_a_study_over_the_instance_cap_is_refused_and_a_duplicate_still_accepted(
    tmp_path, shared_data
):
    scp = start_scp(tmp_path, max_study_instances=2)
    try:
        path = sorted((shared_data / "rsna-pneumonia-sample/stage_1_train_images").glob("*.dcm"))
        source = pydicom.dcmread(path[0])
        instances = []
        for _ in range(3):
            ds = pydicom.dcmread(path[0])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            instances.append(ds)
        syntax = source.file_meta.TransferSyntaxUID
        statuses = [int(store(scp, ds, ds.SOPClassUID, syntax).Status) for ds in instances]
        assert statuses == [0x0000, 0x0000, STUDY_INSTANCE_CAP]
        assert int(store(scp, instances[0], source.SOPClassUID, syntax).Status) == 0x0000
        with scp.db.transaction() as session:
            (event,) = audit.query(session, audit.AuditFilter(action="instance.refused"))
            assert event.study_uid == source.StudyInstanceUID
            assert "max_study_instances 2" in event.detail["reason"]
    finally:
        scp.stop()


def test_codestream_shapes_are_read_from_jpeg_ls_and_jpeg_2000_headers():
    bomb = jpeg_ls_bomb(64)
    fragment = pydicom.encaps.get_frame(bomb.PixelData, 0)
    assert codestream_shape(fragment)[:3] == (20000, 20000, 1)
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIIIIIIIH", 41, 0, 3000, 2000, 0, 0, 0, 0, 0, 0, 1)
    assert codestream_shape(siz + b"\x0b\x01\x01") == (2000, 3000, 1, 12)
