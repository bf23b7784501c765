from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage

from node.dicom.classify import classify


def header(**attrs) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.Modality = "CR"
    ds.PixelData = b"\0\0"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_real_rsna_frontal_chest_is_model_input(shared_data: Path):
    path = next((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    verdict = classify(pydicom.dcmread(path, stop_before_pixels=False))
    assert verdict.processable and verdict.view == "frontal" and verdict.reason is None


def test_real_ct_is_skipped_for_its_modality(shared_data: Path):
    path = shared_data / "orthanc-transfer-syntax-zoo-noncxr" / "1.2.840.10008.1.2.4.70.dcm"
    if not path.exists():
        pytest.skip("CT sample missing")
    verdict = classify(pydicom.dcmread(path))
    assert not verdict.processable
    assert "SOP class" in verdict.reason or "not CR/DX" in verdict.reason


def test_nih_dx_without_body_part_is_assumed_chest_and_says_so(shared_data: Path):
    path = next((shared_data / "nih-chestxray14-dicom-gcp").glob("*.dcm"))
    ds = pydicom.dcmread(path)
    assert classify(ds).processable
    assert "assumed chest" in classify(ds).reason
    assert not classify(ds, assume_chest_without_body_part=False).processable


@pytest.mark.parametrize(
    ("attrs", "processable", "reason"),
    [
        ({"BodyPartExamined": "CHEST", "ViewPosition": "LL"}, False, "lateral"),
        ({"BodyPartExamined": "CHEST", "PatientOrientation": ["A", "F"]}, False, "lateral"),
        ({"BodyPartExamined": "CHEST", "PatientOrientation": ["L", "F"]}, True, None),
        ({"BodyPartExamined": "HAND", "ViewPosition": "PA"}, False, "body part HAND"),
        ({"BodyPartExamined": "CHEST", "ViewPosition": "AP"}, True, None),
        ({"StudyDescription": "XR CHEST 1 VIEW", "ViewPosition": "AP"}, True, None),
        ({"BodyPartExamined": "CHEST"}, True, "assumed frontal"),
        ({"BodyPartExamined": "CHEST", "PatientSpeciesDescription": "Canine"}, False, "species"),
        ({"BodyPartExamined": "CHEST", "Manufacturer": "cxrnode"}, False, "cxrnode itself"),
    ],
)
def test_header_rules(attrs, processable, reason):
    verdict = classify(header(**attrs))
    assert verdict.processable is processable
    if reason is None:
        assert verdict.reason is None
    else:
        assert reason in verdict.reason


def test_instance_without_pixels_is_not_an_image():
    ds = header(BodyPartExamined="CHEST")
    del ds.PixelData
    assert classify(ds).reason == "no pixel data (not an image)"
