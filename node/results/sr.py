"""One Comprehensive SR per study and model run, following TID 1500 (Measurement Report).

Tree (row numbers of TID 1500):

- 1 Imaging Measurement Report, with language (2), the algorithm as device observer (3),
  procedure reported (4) and the image library of every source image (5), each entry with the
  Modality its image states
- 6 Imaging Measurements: one TID 1501 group per outlined finding per image (a present finding
  whose Grad-CAM has a region), laid out as OHIF 3 / Cornerstone hydrate it into a measurement:
  a Cornerstone tracking identifier and a tracking UID, the algorithm (TID 4019: name, version,
  threshold, package digest, text input), the finding's code, its probability (TID 300)
  INFERRED FROM the region (SCOORD polyline around the heat mass on the source image's pixel
  grid, TID 320), the present call, and a Comment "<finding> (AI p=0.53)" that viewers show as
  the measurement's label. Left out when nothing is outlined
- 12 Qualitative Evaluations: the summary finding (abnormal or not, with the highest
  probability) as a CODE and in words, the review notice, the disclaimer of an untrained model,
  which clinical text the model read, and every label without a region (probability,
  threshold, present/absent) as TEXT items (row 14). OHIF 3.13 stops loading an SR at any
  measurement group without spatial coordinates, so those labels are not groups
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import RelationshipTypeValues
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.results import codes
from node.results.findings import AlgorithmInfo, Finding, ImageResult, ResultInputError
from node.results.notices import TEXT_SOURCES, notices, series_description, summary
from node.results.region import DEFAULT_REGION_LEVEL, HeatRegion, finding_regions, tracking_uid
from node.results.source import reference_header

# Tracking identifier (TEXT) of an outlined finding: Cornerstone's SR adapters (OHIF) pick the
# tool that rehydrates a measurement group by this prefix; a closed POLYLINE is a freehand ROI.
CORNERSTONE_OUTLINE = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"

# Probabilities are written to 4 decimals: float32 model outputs carry noise beyond that, and
# viewers show NumericValue (DS) as written.
_PROBABILITY_DECIMALS = 4


def build_structured_report(
    images: Sequence[ImageResult],
    algorithm: AlgorithmInfo,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9901,
    instance_number: int = 1,
    text_source: str = "none",
    text_note: str | None = None,
    predecessors: Sequence[Dataset] = (),
    region_level: float = DEFAULT_REGION_LEVEL,
    description: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """Build the TID 1500 Comprehensive SR of one model run over a study.

    Parameters
    ----------
    images : sequence of ImageResult
        The processed images of one study, in the order they are numbered in the report.
    algorithm : AlgorithmInfo
        The model that produced the findings.
    sop_instance_uid, series_instance_uid : str
        UIDs of the SR, chosen by the caller so that a rebuild is identical.
    series_number, instance_number : int
        Numbers of the SR's own series and of the SR within it.
    text_source : {"report", "indication", "none"}
        Which clinical text the model read besides the images.
    text_note : str or None
        Why that text (e.g. "no report within the pairing window"), stated beside it.
    predecessors : sequence of pydicom.Dataset
        Earlier SRs of this algorithm on this study that this one replaces (after a late or
        corrected report); referenced in the Predecessor Documents Sequence and named in the
        report's statements.
    region_level : float
        Fraction of the Grad-CAM peak a finding's region encloses (see `heat_region`).
    description : str or None
        Series Description; None names the AI and the review warning.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        The SR, ready to be written with ``save_as``.

    Raises
    ------
    ResultInputError
        If `images` is empty, mixes studies or repeats an instance, or `text_source` is unknown.
    """
    images = tuple(images)
    _check_one_study(images)
    if text_source not in TEXT_SOURCES:
        raise ResultInputError(
            f"text_source is {text_source!r}; expected one of {sorted(TEXT_SOURCES)}"
        )
    headers = [reference_header(image.source) for image in images]
    groups = []
    unoutlined = []
    for number, (image, header) in enumerate(zip(images, headers, strict=True), start=1):
        regions = {region.finding: region for region in finding_regions(image, region_level)}
        for finding in image.findings:
            if finding.name in regions:
                groups.append(
                    _finding_group(
                        number,
                        header,
                        finding,
                        regions[finding.name],
                        algorithm,
                        text_source,
                        sop_instance_uid,
                    )
                )
            else:
                unoutlined.append(_unoutlined_statement(finding, number, len(images)))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=codes.PROCEDURE_CHEST_XRAY,
        # highdicom wants at least one group; with no outline the placeholder's container is
        # removed below (TID 1500 row 6 is optional beside the Qualitative Evaluations).
        imaging_measurements=groups or [_placeholder_group()],
        title=codes.REPORT_TITLE,
        referenced_images=[_library_view(header) for header in headers],
    )
    if not groups:
        report[0].ContentSequence = [
            item
            for item in report[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue != codes.IMAGING_MEASUREMENTS.value
        ]
    _code_library_modalities(report[0], headers)
    # highdicom builds TID 1500 up to row 8 only; row 12 (Qualitative Evaluations) is appended
    # to the root container it returns.
    report[0].ContentSequence.append(
        _report_statements(images, algorithm, text_source, text_note, predecessors, unoutlined)
    )
    return hd.sr.ComprehensiveSR(
        evidence=headers,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        series_description=description or series_description(algorithm, "sr"),
        coding_schemes=_local_coding_schemes(images),
        # The content is complete, but no human verified it and it is not the final word.
        is_complete=True,
        is_final=False,
        is_verified=False,
        # Notices and identifiers contain non-ASCII (e.g. the em dash); patient names arrive in
        # any character set and are re-encoded from their decoded form.
        specific_character_set="ISO_IR 192",
        previous_versions=list(predecessors) or None,
    )


def _check_one_study(images: tuple[ImageResult, ...]) -> None:
    if not images:
        raise ResultInputError("build_structured_report needs at least one ImageResult")
    studies = {str(image.source.StudyInstanceUID) for image in images}
    if len(studies) != 1:
        raise ResultInputError(f"one SR covers one study; the images span {sorted(studies)}")
    instances = [str(image.source.SOPInstanceUID) for image in images]
    if len(set(instances)) != len(instances):
        raise ResultInputError(f"an image appears twice among {instances}")


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    # The same model package is the same device in every report it writes.
    device_uid = generate_uid(
        entropy_srcs=["cxrnode-device", algorithm.name, algorithm.version, algorithm.package_sha256]
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid,
        name=f"{algorithm.name} {algorithm.version}",
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE_OBSERVER,
            observer_identifying_attributes=device,
        )
    )


def _library_view(header: Dataset) -> Dataset:
    """The header as highdicom's image library (TID 1601-1603) should see it.

    For CR/DX modalities highdicom reads Patient Orientation and Imager Pixel Spacing without
    checking they exist. Those TID 1603 descriptors are optional, so for a source without them
    the Modality is blanked here and the entry carries only the descriptors the source has.
    The entry's coded modality comes from the SOP Class, not from this attribute.
    """
    orientation = header.get("PatientOrientation") or []
    spacing = header.get("ImagerPixelSpacing") or []
    if len(orientation) == 2 and len(spacing) == 2:
        return header
    view = deepcopy(header)
    view.Modality = ""
    return view


def _placeholder_group() -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="none")
    )


def _code_library_modalities(root: Dataset, headers: Sequence[Dataset]) -> None:
    """Give each Image Library entry (TID 1602 row 1) the Modality its source image states.

    highdicom codes the entry's modality from the SOP Class, so a CR image stored as Secondary
    Capture (as the RSNA and SIIM exports are) would be listed as "OT", which disagrees with
    the image. The source's own Modality is used where CID 29 knows it.
    """
    stated = {str(header.SOPInstanceUID): header.get("Modality", "") for header in headers}
    for library in _children(root, codes.IMAGE_LIBRARY):
        for group in _children(library, codes.IMAGE_LIBRARY_GROUP):
            for entry in group.ContentSequence:
                if entry.ValueType != "IMAGE":
                    continue
                uid = str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                coded = codes.modality(stated.get(uid, ""))
                if coded is None:
                    continue
                for item in _children(entry, codes.MODALITY):
                    item.ConceptCodeSequence = [coded]


def _children(item: Dataset, concept: hd.sr.CodedConcept) -> list[Dataset]:
    return [
        child
        for child in item.get("ContentSequence", [])
        if child.ConceptNameCodeSequence[0].CodeValue == concept.value
        and child.ConceptNameCodeSequence[0].CodingSchemeDesignator == concept.scheme_designator
    ]


def _finding_group(
    number: int,
    header: Dataset,
    finding: Finding,
    region: HeatRegion,
    algorithm: AlgorithmInfo,
    text_source: str,
    sop_instance_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The TID 1501 group of one outlined finding on one image.

    The layout viewers built on Cornerstone (OHIF 3) hydrate into a measurement: a Cornerstone
    tracking identifier, the probability NUM INFERRED FROM the region's SCOORD (TID 300 row 8,
    TID 320), and a Comment naming the finding and its probability, which those viewers show
    as the measurement's label.
    """
    concept = hd.sr.CodedConcept(finding.code_value, finding.coding_scheme, finding.code_meaning)
    tracking = hd.sr.TrackingIdentifier(
        uid=tracking_uid(sop_instance_uid, header.SOPInstanceUID, finding.name),
        identifier=CORNERSTONE_OUTLINE,
    )
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        manufacturer=algorithm.manufacturer,
        parameters=[
            f"threshold={finding.threshold:g}",
            f"package_sha256={algorithm.package_sha256}",
            f"text_input={text_source}",
        ],
    )
    value = round(float(finding.probability), _PROBABILITY_DECIMALS)
    outline = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=region.points,
        source_image=hd.sr.SourceImageForRegion(header.SOPClassUID, header.SOPInstanceUID),
    )
    probability = hd.sr.Measurement(
        name=codes.PROBABILITY,
        value=value,
        unit=codes.NO_UNITS,
        referenced_coordinates=[outline],
    )
    call = hd.sr.QualitativeEvaluation(
        name=concept, value=codes.PRESENT if finding.present else codes.ABSENT
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=concept,
        algorithm_id=algorithm_id,
        measurements=[probability],
        qualitative_evaluations=[call],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(header.SOPClassUID, header.SOPInstanceUID)
        ],
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.COMMENT,
            value=finding_label(finding.name, value),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def _unoutlined_statement(finding: Finding, number: int, images: int) -> str:
    """A label without a drawn region, in words (Qualitative Evaluations, not a measurement).

    OHIF 3 stops loading an SR at any measurement group without spatial coordinates, so the
    labels without a region are stated here, with probability, threshold and call.
    """
    where = f" (image {number})" if images > 1 else ""
    call = "present" if finding.present else "absent"
    return (
        f"{finding.name}{where}: probability {finding.probability:.{_PROBABILITY_DECIMALS}f}, "
        f"threshold {finding.threshold:g}, {call}; no region drawn."
    )


def finding_label(name: str, probability: float) -> str:
    """The label a viewer shows beside a finding's outline, e.g. "Pneumonia (AI p=0.53)"."""
    return f"{name} (AI p={probability:.2f})"


def _report_statements(
    images: tuple[ImageResult, ...],
    algorithm: AlgorithmInfo,
    text_source: str,
    text_note: str | None,
    predecessors: Sequence[Dataset],
    unoutlined: Sequence[str] = (),
) -> hd.sr.ContainerContentItem:
    used = f"Clinical text used by the algorithm: {TEXT_SOURCES[text_source]}"
    abnormal, summary_text = summary(images)
    statements = [
        summary_text,
        *notices(algorithm),
        f"{used} ({text_note})." if text_note else f"{used}.",
        *unoutlined,
    ]
    statements += [
        f"This result replaces the earlier AI result {p.SOPInstanceUID} "
        f"(series {p.SeriesInstanceUID}, {p.get('ContentDate', '')} {p.get('ContentTime', '')})."
        for p in predecessors
    ]
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    overall = hd.sr.CodeContentItem(
        name=codes.SUMMARY_FINDING,
        value=codes.ABNORMAL if abnormal else codes.NO_ABNORMALITY,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            overall,
            *(
                hd.sr.TextContentItem(
                    name=codes.COMMENT,
                    value=text,
                    relationship_type=RelationshipTypeValues.CONTAINS,
                )
                for text in statements
            ),
        ]
    )
    return container


def _local_coding_schemes(
    images: tuple[ImageResult, ...],
) -> list[CodingSchemeIdentificationItem] | None:
    """Coding Scheme Identification (SOP Common) for private ("99...") label schemes.

    The SOP Common module requires an item for every designator not defined in PS3.16; the
    label vocabulary may use a local scheme for labels that have no SNOMED CT concept.
    """
    local = sorted(
        {
            finding.coding_scheme
            for image in images
            for finding in image.findings
            if finding.coding_scheme.startswith("99")
        }
    )
    if not local:
        return None
    return [
        CodingSchemeIdentificationItem(
            designator=designator,
            name=f"{designator} local label codes of the cxrnode model vocabulary",
            responsible_organization="cxrnode",
        )
        for designator in local
    ]
