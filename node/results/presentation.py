"""One Grayscale Softcopy Presentation State per processed image: the SR's regions, drawn.

For PACS viewers that apply presentation states but do not draw SR regions: the same outlines
as the SR and the captures (`finding_regions`), each labelled with its finding and
probability, and the review notice and model name as text, on two graphic layers.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.pixels import pack_bits

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
    if regions:
        _add_outline_overlay(state, regions, outlines.GraphicLayer, rows, cols)
    return state


# The overlay group the outlines are rasterised into (PS3.3 C.9.2, groups 6000-601E).
OUTLINE_OVERLAY_GROUP = 0x6000


def _add_outline_overlay(
    state: Dataset, regions: list[HeatRegion], layer: str, rows: int, cols: int
) -> None:
    """The outlines once more as a 1-bit overlay plane, activated on the outlines' layer.

    Renderers that apply overlays but not graphic annotations (dcmtk's dcmpstat, which
    dcmp2pgm and DICOMscope use, draws no polyline) then show the outlines too; the plane
    covers the outlines' bounding box only. Overlay Plane (C.9.2) and Overlay Activation
    (C.11.7) modules, which highdicom's presentation state has no parameter for.
    """
    left = max(0, int(np.floor(min(r.bounds[0] for r in regions))) - 2)
    top = max(0, int(np.floor(min(r.bounds[1] for r in regions))) - 2)
    right = min(cols, int(np.ceil(max(r.bounds[2] for r in regions))) + 2)
    bottom = min(rows, int(np.ceil(max(r.bounds[3] for r in regions))) + 2)
    canvas = Image.new("1", (right - left, bottom - top), 0)
    draw = ImageDraw.Draw(canvas)
    for region in regions:
        # PIL puts pixel (x, y)'s centre at (x, y); image coordinates put it at (x + .5, y + .5).
        points = [(float(x) - 0.5 - left, float(y) - 0.5 - top) for x, y in region.points]
        draw.line(points, fill=1, width=1)
    bits = np.asarray(canvas, dtype=np.uint8)
    group = OUTLINE_OVERLAY_GROUP << 16
    state.add_new(group | 0x0010, "US", bits.shape[0])  # Overlay Rows
    state.add_new(group | 0x0011, "US", bits.shape[1])  # Overlay Columns
    state.add_new(group | 0x0022, "LO", "AI finding regions")  # Overlay Description
    state.add_new(group | 0x0040, "CS", "G")  # Overlay Type: graphics
    state.add_new(group | 0x0050, "SS", [top + 1, left + 1])  # Overlay Origin, 1-based row\col
    state.add_new(group | 0x0100, "US", 1)  # Overlay Bits Allocated
    state.add_new(group | 0x0102, "US", 0)  # Overlay Bit Position
    state.add_new(group | 0x1001, "CS", layer)  # Overlay Activation Layer
    state.add_new(group | 0x1500, "LO", "AI outlines")  # Overlay Label
    state.add_new(group | 0x3000, "OW", pack_bits(bits.ravel()))  # Overlay Data


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
