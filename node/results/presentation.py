"""One Grayscale Softcopy Presentation State per processed image: the SR's regions, drawn.

For PACS viewers that apply presentation states but do not draw SR regions: the same outlines
as the SR and the captures (`finding_regions`), each labelled with its finding and
probability, and the review notice and model name as text, on two graphic layers.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset

from node.results.findings import AlgorithmInfo, ImageResult
from node.results.notices import REVIEW_NOTICE, notices, series_description
from node.results.region import DEFAULT_REGION_LEVEL, HeatRegion, finding_regions, tracking_uid
from node.results.source import reference_header

# Graphic Layer Recommended Display CIELab Value: a saturated orange for the outlines and a
# yellow for the notices, visible on both lung and bone.
_ORANGE = hd.color.CIELabColor(70.0, 40.0, 75.0)
_YELLOW = hd.color.CIELabColor(90.0, -5.0, 85.0)
# Content Label is CS: upper case, at most 16 characters.
CONTENT_LABEL = "AI_FINDINGS"
# Label boxes are this fraction of the shorter image side tall.
_LABEL_FRACTION = 0.03


def build_presentation_state(
    image: ImageResult,
    algorithm: AlgorithmInfo,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9904,
    instance_number: int = 1,
    region_level: float = DEFAULT_REGION_LEVEL,
    description: str | None = None,
    sr_instance_uid: str | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Build the presentation state drawing one image's finding regions and their labels.

    Parameters
    ----------
    image : ImageResult
        The processed image; its present findings with a heatmap get an outline.
    algorithm : AlgorithmInfo
        The model that produced the findings.
    sop_instance_uid, series_instance_uid : str
        UIDs chosen by the caller so that a rebuild is identical.
    series_number, instance_number : int
        Numbers of the presentation states' series and of this one within it.
    region_level : float
        Fraction of the Grad-CAM peak a region encloses (as in the SR).
    description : str or None
        Series Description; None names the AI and the review warning.
    sr_instance_uid : str or None
        The SR of the same run: each outline then carries the tracking identifier and UID of
        the SR's measurement group for the same finding.

    Returns
    -------
    highdicom.pr.GrayscaleSoftcopyPresentationState
        In the source's study, referencing the source image.
    """
    header = reference_header(image.source)
    regions = finding_regions(image, region_level)
    outlines = hd.pr.GraphicLayer(
        "AI_REGIONS", order=1, description="AI finding regions", display_color=_ORANGE
    )
    labels = hd.pr.GraphicLayer(
        "AI_NOTICE", order=2, description=REVIEW_NOTICE, display_color=_YELLOW
    )
    rows, cols = int(header.Rows), int(header.Columns)
    height = max(12.0, _LABEL_FRACTION * min(rows, cols))
    notice_lines = [*notices(algorithm), f"Model: {algorithm.name} {algorithm.version}"]
    if not regions:
        notice_lines.append("No finding region above threshold")
    notice_annotation = hd.pr.GraphicAnnotation(
        referenced_images=[header],
        graphic_layer=labels,
        text_objects=[
            hd.pr.TextObject(
                text_value=line[:64],
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=_box(4, 4 + n * height, cols - 4, 4 + (n + 1) * height, rows, cols),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
            for n, line in enumerate(notice_lines)
        ],
    )
    annotations = [notice_annotation]
    # highdicom refuses an annotation with nothing in it: no region, no region layer content.
    if regions:
        report_uid = sr_instance_uid or sop_instance_uid
        region_annotation = hd.pr.GraphicAnnotation(
            referenced_images=[header],
            graphic_layer=outlines,
            graphic_objects=[
                _outline(region, n, report_uid, header.SOPInstanceUID)
                for n, region in enumerate(regions, start=1)
            ],
            text_objects=[
                _label(region, n, rows, cols, height) for n, region in enumerate(regions, start=1)
            ],
        )
        annotations.insert(0, region_annotation)
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[_display_view(header)],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.package_sha256[:16] or "none",
        content_label=CONTENT_LABEL,
        content_description=f"{algorithm.name} findings"[:64],
        graphic_annotations=annotations,
        graphic_layers=[outlines, labels],
        series_description=description or series_description(algorithm, "gsps"),
        # The notices contain non-ASCII (e.g. the em dash).
        specific_character_set="ISO_IR 192",
    )
    # Patient and General Study modules in full, as the SR and captures carry them.
    state.copy_patient_and_study_information(header)
    # General Series, Type 3. Saying the body part also tells validators that Laterality
    # (Type 2C, for paired body parts) does not apply.
    state.BodyPartExamined = "CHEST"
    return state


def _outline(
    region: HeatRegion, number: int, report_uid: str, image_uid: str
) -> hd.pr.GraphicObject:
    return hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=region.points.astype(np.float32),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        tracking_id=f"{number}. {region.finding}"[:64],
        tracking_uid=tracking_uid(report_uid, image_uid, region.finding),
    )


def _label(
    region: HeatRegion, number: int, rows: int, cols: int, height: float
) -> hd.pr.TextObject:
    """The finding's name and probability in a box just above its outline (inside the image)."""
    left, top, right, _ = region.bounds
    text = f"{number}. {region.finding} {region.probability:.2f}"
    width = max(right - left, 0.6 * height * len(text))
    y0 = top - height if top - height >= 0 else top
    return hd.pr.TextObject(
        text_value=text[:64],
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=_box(left, y0, left + width, y0 + height, rows, cols),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )


def _box(
    left: float, top: float, right: float, bottom: float, rows: int, cols: int
) -> tuple[float, float, float, float]:
    """A bounding box clipped to the image, so viewers that refuse off-image text still draw it."""

    def clip(value: float, high: int) -> float:
        return float(min(max(value, 0.0), float(high)))

    return clip(left, cols), clip(top, rows), clip(right, cols), clip(bottom, rows)


def _display_view(header: Dataset) -> Dataset:
    """The header with what highdicom reads to reference and display it (Bits, photometric)."""
    view = Dataset()
    view.update(header)
    for keyword, default in (("BitsStored", 8), ("PhotometricInterpretation", "MONOCHROME2")):
        if keyword not in view:
            setattr(view, keyword, default)
    return view
