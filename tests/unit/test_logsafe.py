"""What the application log gets of exceptions and of what pydicom reads."""

from __future__ import annotations

import logging
import warnings
from io import BytesIO

import pydicom
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.build import keep_identifiers_out_of_the_log
from node.logsafe import audit_text, describe


def encoded_with_a_bad_birth_date() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    with pydicom.config.disable_value_validation():
        ds.PatientBirthDate = "SECRET-1980"
        ds.StudyInstanceUID = "1.2.SECRET"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_workers_read_spooled_files_without_pydicom_logging_their_values(monkeypatch, caplog):
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.WARN)
    data = encoded_with_a_bad_birth_date()
    keep_identifiers_out_of_the_log()  # what every worker process runs first
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        ds = dcmread(BytesIO(data))
        assert (ds.PatientBirthDate, ds.StudyInstanceUID) == ("SECRET-1980", "1.2.SECRET")
    # pydicom logged and warned "Invalid value for VR DA: 'SECRET-1980'" (and the UID).
    assert "SECRET" not in caplog.text
    assert not [w for w in warned if "SECRET" in str(w.message)]


def test_an_exception_is_described_by_type_and_place_never_by_its_text():
    try:
        raise ValueError("patient PAT-SECRET has no report")
    except ValueError as exc:
        text = describe(exc)
    assert "SECRET" not in text
    assert text.startswith("ValueError at test_logsafe.py:")
    assert "in test_an_exception_is_described_by_type_and_place_never_by_its_text" in text
    assert describe(OSError(28, "No space left on device")) == "OSError: No space left on device"
    assert audit_text(ValueError("x" * 5000)).startswith("ValueError: xxx")
    assert len(audit_text(ValueError("x" * 5000))) == 2000
