"""One Secondary Capture per processed image: the heatmap blended in, the findings burned in."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.results import codes
from node.results.annotation import burn_in, caption
from node.results.findings import AlgorithmInfo, ImageResult
from node.results.heatmap import blend_heatmap
from node.results.notices import notices, series_description
from node.results.source import reference_header

# Larger sources are shrunk so the uncompressed RGB stays within what PACS accept readily.
MAX_SIDE = 4096

_ORIENTATION_LETTERS = {member.value for member in hd.PatientOrientationValuesBiped}


def build_overlay(
    image: ImageResult,
    algorithm: AlgorithmInfo,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9902,
    instance_number: int = 1,
) -> hd.sc.SCImage:
    """Build the Secondary Capture showing one image with its Grad-CAM and findings.

    Parameters
    ----------
    image : ImageResult
        The processed image.
    algorithm : AlgorithmInfo
        The model that produced the findings.
    sop_instance_uid, series_instance_uid : str
        UIDs of the capture, chosen by the caller so that a rebuild is identical.
    series_number, instance_number : int
        Numbers of the captures' series and of this capture within it.

    Returns
    -------
    highdicom.sc.SCImage
        RGB, 8-bit, on the source pixel grid (shrunk only beyond `MAX_SIDE`), in the source's
        study, with BurnedInAnnotation YES.
    """
    header = reference_header(image.source)
    display, heatmap = _fit(image.display, image.heatmap)
    header_lines, footer_lines = caption(image, algorithm)
    pixels = burn_in(blend_heatmap(display, heatmap), header_lines, footer_lines)
    orientation = _orientation(header)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        series_description=series_description(algorithm),
        # highdicom insists on single-letter orientations for the PATIENT coordinate system;
        # the source's actual value is written below, whatever it is.
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        # The notices contain non-ASCII (e.g. the em dash).
        specific_character_set="ISO_IR 192",
    )
    # Patient and General Study modules in full (age, study description, other IDs), as the
    # SR gets them; from_ref_dataset copies only the attributes it has parameters for.
    capture.copy_patient_and_study_information(header)
    _describe_derivation(capture, header, image, algorithm)
    return capture


def _fit(display: np.ndarray, heatmap: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The display and heatmap, shrunk together when the source is larger than `MAX_SIDE`."""
    rows, cols = display.shape
    scale = MAX_SIDE / max(rows, cols)
    if scale >= 1.0:
        return display, heatmap
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))

    def shrink(array: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(array.astype(np.float32)).resize(size, Image.Resampling.BOX)
        return np.asarray(resized)

    return shrink(display), None if heatmap is None else shrink(heatmap)


def _orientation(header: Dataset) -> tuple[str, str] | None:
    value = list(header.get("PatientOrientation") or [])
    if len(value) == 2 and all(letter in _ORIENTATION_LETTERS for letter in value):
        return value[0], value[1]
    return None


def _describe_derivation(
    capture: hd.sc.SCImage, header: Dataset, image: ImageResult, algorithm: AlgorithmInfo
) -> None:
    """Attributes highdicom's SCImage has no parameter for; each names its module."""
    # SC Equipment (PS3.3 C.8.6.1), Type 1: a workstation rendered this image ("WSD"); highdicom
    # always writes "DI" (digital interface).
    capture.ConversionType = "WSD"
    # General Image (C.7.6.1), Type 3, but de-identification and display rely on it: the
    # findings and notices are part of the pixels.
    capture.BurnedInAnnotation = "YES"
    # General Series, Type 3. The node only analyses chest radiographs; saying so also tells
    # validators that Laterality (Type 2C, for paired body parts) does not apply.
    capture.BodyPartExamined = "CHEST"
    # General Image, Type 2C: the source's orientation, possibly compound ("FL") or unknown ("").
    capture.PatientOrientation = list(header.get("PatientOrientation") or [])
    # General Image, Type 3 (ST, 1024 characters): how the pixels came about.
    if image.heatmap is not None:
        shown = f"the Grad-CAM heatmap for {image.heatmap_finding} blended in and "
    else:
        shown = ""
    capture.DerivationDescription = (
        f"Source image with {shown}the findings of {algorithm.name} {algorithm.version} "
        "burned in. " + " ".join(notices(algorithm))
    )[:1024]
    # General Image, Type 3 (LT): viewers that show image comments show the notices too.
    capture.ImageComments = "\n".join(notices(algorithm))
    # General Reference (C.12.4), Type 3: the image these pixels were derived from.
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.SOPClassUID
    reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [codes.SOURCE_FOR_IMAGE_PROCESSING]
    capture.SourceImageSequence = [reference]
    # General Image, Type 3: once a source was lossy compressed, derived images say so too.
    if header.get("LossyImageCompression") == "01":
        capture.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in header:
                setattr(capture, keyword, header[keyword].value)
