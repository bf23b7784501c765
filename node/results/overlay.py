"""Secondary Captures per processed image: an overview, and one per present finding.

The overview outlines every finding region and blends in the top finding's heatmap; each
finding capture shows that finding's heatmap and outline: Grad-CAM's, or, in a series of its
own where the package asks for it, Integrated Gradients' (the outline stays Grad-CAM's region,
the one the SR reports). All carry the colour scale (when a
heatmap is shown), the findings by probability, the model and the review notice, burned in.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.results import codes
from node.results.annotation import burn_in, caption, draw_legend, draw_regions
from node.results.findings import (
    GRADCAM,
    INTEGRATED_GRADIENTS,
    LEGEND_TITLES,
    METHOD_NAMES,
    AlgorithmInfo,
    ImageResult,
    ResultInputError,
)
from node.results.heatmap import blend_heatmap, legend_ramp
from node.results.notices import notices, series_description
from node.results.region import DEFAULT_REGION_LEVEL, HeatRegion, finding_regions
from node.results.source import reference_header

# Larger sources are shrunk so the uncompressed RGB stays within what PACS accept readily.
MAX_SIDE = 4096

_ORIENTATION_LETTERS = {member.value for member in hd.PatientOrientationValuesBiped}


def build_overview(
    image: ImageResult,
    algorithm: AlgorithmInfo,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9902,
    instance_number: int = 1,
    region_level: float = DEFAULT_REGION_LEVEL,
    description: str | None = None,
) -> hd.sc.SCImage:
    """Build the overview capture of one image: every finding region outlined and numbered.

    The heatmap of the highest-probability finding is blended in (when there is one), with its
    colour scale; the findings are listed by probability, present ones numbered as their
    outlines.

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
    region_level : float
        Fraction of the Grad-CAM peak a region encloses (as in the SR).
    description : str or None
        Series Description; None names the AI and the review warning.

    Returns
    -------
    highdicom.sc.SCImage
        RGB, 8-bit, on the source pixel grid (shrunk only beyond `MAX_SIDE`), in the source's
        study, with BurnedInAnnotation YES.
    """
    top = image.ranked[0].name
    shown = top if top in image.heatmaps else None
    regions = list(enumerate(finding_regions(image, region_level), start=1))
    return _capture(
        image,
        algorithm,
        shown,
        GRADCAM,
        regions,
        True,
        sop_instance_uid,
        series_instance_uid,
        series_number,
        instance_number,
        description,
    )


def build_finding_capture(
    image: ImageResult,
    finding: str,
    algorithm: AlgorithmInfo,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9903,
    instance_number: int = 1,
    region_level: float = DEFAULT_REGION_LEVEL,
    description: str | None = None,
    method: str = GRADCAM,
) -> hd.sc.SCImage:
    """Build the capture of one present finding: its heatmap, colour scale and outline.

    Parameters
    ----------
    image : ImageResult
        The processed image.
    finding : str
        A present finding of the image that has a heatmap.
    algorithm, sop_instance_uid, series_instance_uid, series_number, instance_number,
    region_level, description
        As for `build_overview`.
    method : str
        Whose map is blended in: ``"gradcam"`` (`ImageResult.heatmaps`) or
        ``"integrated_gradients"`` (`ImageResult.attributions`); the outline is the finding's
        region either way.

    Returns
    -------
    highdicom.sc.SCImage
        As `build_overview`, showing this finding only.

    Raises
    ------
    ResultInputError
        If the finding is not present on the image or has no map of the method.
    """
    if finding not in image.maps(method) or not image.finding(finding).present:
        raise ResultInputError(
            f"a finding capture needs a present finding with a heatmap "
            f"({METHOD_NAMES[method]}); {finding!r} of {image.source.SOPInstanceUID} is not one"
        )
    numbered = list(enumerate(finding_regions(image, region_level), start=1))
    regions = [(n, region) for n, region in numbered if region.finding == finding]
    return _capture(
        image,
        algorithm,
        finding,
        method,
        regions,
        False,
        sop_instance_uid,
        series_instance_uid,
        series_number,
        instance_number,
        description,
    )


def _capture(
    image: ImageResult,
    algorithm: AlgorithmInfo,
    shown: str | None,
    method: str,
    regions: list[tuple[int, HeatRegion]],
    overview: bool,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    description: str | None,
) -> hd.sc.SCImage:
    header = reference_header(image.source)
    blended, scale = _blended(image, shown, method)
    header_lines, footer_lines = caption(image, algorithm, shown, overview, METHOD_NAMES[method])
    pixels = draw_regions(blended, regions, scale)
    if shown is not None:
        pixels = draw_legend(pixels, legend_ramp(), LEGEND_TITLES[method])
    pixels = burn_in(pixels, header_lines, footer_lines, legend=shown is not None)
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
        series_description=description
        or series_description(algorithm, _series_kind(overview, method)),
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
    _describe_derivation(capture, header, shown, method, overview, algorithm)
    return capture


def _series_kind(overview: bool, method: str) -> str:
    if overview:
        return "sc"
    return "ig_sc" if method == INTEGRATED_GRADIENTS else "finding_sc"


def _blended(image: ImageResult, shown: str | None, method: str) -> tuple[np.ndarray, float]:
    """The capture's gray image with `shown`'s `method` map blended in (read-only), and its
    scale.

    Kept on the image, as the overview and the top finding's capture blend the same heatmap.
    """
    cached = image.blend_cache.get((method, shown))
    if cached is None:
        heat = image.heatmap(shown, method) if shown else None
        display, heatmap, scale = _fit(image.display, heat)
        blended = blend_heatmap(display, heatmap)
        blended.setflags(write=False)
        cached = image.blend_cache[(method, shown)] = (blended, scale)
    return cached


def _fit(
    display: np.ndarray, heatmap: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The display and heatmap, shrunk together when the source is larger than `MAX_SIDE`,
    and the scale applied."""
    rows, cols = display.shape
    scale = MAX_SIDE / max(rows, cols)
    if scale >= 1.0:
        return display, heatmap, 1.0
    if display.dtype == np.uint8:  # display_levels: averaged as the fractions they stand for
        display = display / np.float32(255.0)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))

    def shrink(array: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(array.astype(np.float32)).resize(size, Image.Resampling.BOX)
        return np.asarray(resized)

    return shrink(display), None if heatmap is None else shrink(heatmap), size[0] / cols


def _orientation(header: Dataset) -> tuple[str, str] | None:
    value = list(header.get("PatientOrientation") or [])
    if len(value) == 2 and all(letter in _ORIENTATION_LETTERS for letter in value):
        return value[0], value[1]
    return None


def _describe_derivation(
    capture: hd.sc.SCImage,
    header: Dataset,
    shown: str | None,
    method: str,
    overview: bool,
    algorithm: AlgorithmInfo,
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
    blended = f"the {METHOD_NAMES[method]} heatmap for {shown} blended in and " if shown else ""
    outlined = "every finding region" if overview else f"the region of {shown}"
    capture.DerivationDescription = (
        f"Source image with {blended}{outlined} outlined; the findings of {algorithm.name} "
        f"{algorithm.version} burned in. " + " ".join(notices(algorithm))
    )[:1024]
    # General Image, Type 3: which capture of the result set this is, for hanging protocols.
    capture.ImageType = ["DERIVED", "SECONDARY", "OVERVIEW" if overview else "FINDING"]
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
