"""Identifiers stay out of the application log: pydicom's complaints about invalid values are
logged without the value, from the SCP's own reading of a received instance."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from node.build import keep_identifiers_out_of_the_log
from node.log_privacy import WITHHELD
from support.scp import start_scp

# Letters are not allowed in a UI value: pydicom says so, quoting the value.
BAD_STUDY_UID = "1.2.826.0.1.3680043.8.498.PATIENT7"


@pytest.fixture
def scp(tmp_path: Path):
    server = start_scp(tmp_path)
    yield server
    server.stop()


def test_invalid_uid_reaches_neither_the_log_nor_stderr(scp, shared_data, caplog, capfd):
    path = sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    ds = pydicom.dcmread(path[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sender's own complaints are not the node's log
        ds.StudyInstanceUID = BAD_STUDY_UID
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    warnings.simplefilter("always")  # a warning shown earlier in the session is shown again
    keep_identifiers_out_of_the_log()  # as the node does at start
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assoc = ae.associate("127.0.0.1", scp.settings.dicom_port, ae_title="CXRNODE")
        assert assoc.is_established
        assoc.send_c_store(ds)
        assoc.release()
    out, err = capfd.readouterr()
    # The receiver reads with pydicom's value check off (node.log_privacy), so pydicom has nothing
    # to complain about; whatever it still logs about the value is withheld.
    complaints = [
        r.getMessage() for r in caplog.records if "Invalid value for VR UI" in r.getMessage()
    ]
    assert all(WITHHELD in message for message in complaints)
    assert "PATIENT7" not in caplog.text and "PATIENT7" not in out + err
