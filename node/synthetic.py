"""A clearly synthetic chest radiograph study, made from geometry, for demos and load tests.

It is not a patient and not a real image: every header says so, and the pixels are a phantom of
ellipses and arcs that only resembles a frontal chest film.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

SYNTHETIC_NOTE = "SYNTHETIC PHANTOM - NOT A PATIENT"


def phantom_pixels(size: int = 1024, seed: int = 0) -> np.ndarray:
    """A 12-bit frontal-chest-like phantom: body, two lung fields, heart, spine, ribs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 300.0)
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1
    image[body] = 2600
    for cx in (0.32, 0.68):  # lungs are dark: little attenuation
        lung = ((x - cx) / 0.15) ** 2 + ((y - 0.48) / 0.3) ** 2 < 1
        image[lung] = 900
    heart = ((x - 0.54) / 0.13) ** 2 + ((y - 0.62) / 0.12) ** 2 < 1
    image[heart] = 2400
    image[(np.abs(x - 0.5) < 0.035) & body] = 3300  # spine
    for k in range(9):  # ribs: bright arcs across the lung fields
        arc = np.abs(y - (0.25 + 0.06 * k) - 0.08 * (x - 0.5) ** 2 * 4) < 0.007
        image[arc & body] += 500
    image += rng.normal(0, 40, image.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)


def synthetic_study(
    patient_id: str = "SYNTH-0001", accession: str = "SYNTH0001", size: int = 1024, seed: int = 0
) -> Dataset:
    """One DX (for presentation) frontal chest instance of a new synthetic study."""
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"XR CHEST PA - {SYNTHETIC_NOTE}"
    ds.SeriesDescription = "PA"
    ds.Modality = "DX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "cxrnode synthetic phantom"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageComments = SYNTHETIC_NOTE
    ds.BurnedInAnnotation = "NO"
    pixels = phantom_pixels(size, seed)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2000
    ds.WindowWidth = 4000
    ds.ImagerPixelSpacing = [0.3, 0.3]
    ds.PixelData = pixels.tobytes()
    return ds
