"""The TID 1500 SR as a PACS and a radiologist's viewer see it: valid, complete, traceable."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage

from node.results import ResultInputError, build_structured_report
from node.results.sr import CORNERSTONE_OUTLINE

# The staged sources carry single-component patient names; they are copied as received.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")


def _items(sequence) -> Iterator[pydicom.Dataset]:
    for item in sequence:
        yield item
        yield from _items(item.get("ContentSequence", []))


def _meaning(item: pydicom.Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def _groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [
        item
        for item in _items(sr.ContentSequence)
        if item.ValueType == "CONTAINER" and _meaning(item) == "Measurement Group"
    ]


def _child(group: pydicom.Dataset, value_type: str, meaning: str | None = None) -> pydicom.Dataset:
    matches = [
        item
        for item in group.ContentSequence
        if item.ValueType == value_type and (meaning is None or _meaning(item) == meaning)
    ]
    assert len(matches) == 1, f"expected one {value_type} {meaning!r} in the group"
    return matches[0]


def _group_source(group: pydicom.Dataset) -> str:
    """The SOP Instance UID a measurement group is about: its source image (TID 1501) or the
    image its region was selected from (TID 1410)."""
    images = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    for region in (i for i in group.ContentSequence if i.ValueType == "SCOORD"):
        images += [i for i in region.ContentSequence if i.ValueType == "IMAGE"]
    assert len(images) == 1, "expected one source image per group"
    return images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def _texts(sr: pydicom.Dataset) -> list[str]:
    return [item.TextValue for item in _items(sr.ContentSequence) if item.ValueType == "TEXT"]


def _write(sr, tmp_path, name="sr.dcm"):
    path = tmp_path / name
    sr.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def two_image_study(sources, read_source, make_result):
    # The SIIM sample holds one image twice, the second copy's header changed to MONOCHROME1;
    # as two instances of one study the copy needs its own SOP Instance UID.
    first = read_source(sources.siim)
    second = read_source(sources.siim_mono1)
    second.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[first.SOPInstanceUID, "copy"])
    return [
        make_result(first),
        make_result(second, probabilities=(0.1, 0.7, 0.2, 0.3, 0.4, 0.6), heatmap_finding=None),
    ]


def test_two_image_study_sr_is_valid_and_dsrdump_shows_every_finding(
    two_image_study, sources, untrained, uids, tmp_path, dciodvfy_errors, dsrdump
):
    sr = build_structured_report(
        two_image_study, untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
    )
    path = _write(sr, tmp_path)

    assert dciodvfy_errors(path, sources.siim, sources.siim_mono1) == []
    dump = dsrdump(path)
    assert dump.returncode == 0, dump.stderr
    for image in two_image_study:
        assert image.source.SOPInstanceUID in dump.stdout
        for finding in image.findings:
            assert finding.name in dump.stdout
            # A NUM where the finding is outlined, otherwise a statement in words.
            assert f'"{round(finding.probability, 4)}"' in dump.stdout or (
                f"probability {finding.probability:.4f}" in dump.stdout
            )


def test_sr_references_every_source_and_has_one_group_per_outlined_finding(
    two_image_study, untrained, uids, tmp_path
):
    sr = build_structured_report(
        two_image_study, untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
    )
    back = pydicom.dcmread(_write(sr, tmp_path))

    assert back.SOPClassUID == ComprehensiveSRStorage
    sources = {image.source.SOPInstanceUID for image in two_image_study}
    evidence = {
        instance.ReferencedSOPInstanceUID
        for study in back.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert evidence == sources
    library = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in _items(back.ContentSequence)
        if item.ValueType == "IMAGE" and _meaning(item) == "Source"
    }
    assert sources <= library

    # Only the first image has a heatmap (Pneumothorax); every other label of both images is
    # a statement: OHIF stops loading an SR at a measurement group without coordinates.
    groups = _groups(back)
    assert len(groups) == 1
    tracking = [_child(group, "UIDREF", "Tracking Unique Identifier").UID for group in groups]
    assert len(set(tracking)) == len(tracking)
    expected = {
        (image.source.SOPInstanceUID, finding.code_value): finding
        for image in two_image_study
        for finding in image.findings
    }
    for group in groups:
        code = _child(group, "CODE", "Finding").ConceptCodeSequence[0]
        finding = expected.pop((_group_source(group), code.CodeValue))
        probability = _child(group, "NUM", "Probability").MeasuredValueSequence[0]
        assert 0.0 <= float(probability.NumericValue) <= 1.0
        assert float(probability.NumericValue) == pytest.approx(finding.probability, abs=1e-4)
        assert probability.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        call = _child(group, "CODE", finding.code_meaning).ConceptCodeSequence[0].CodeMeaning
        assert call == ("Present" if finding.present else "Absent")
    texts = _texts(back)
    for (uid, _), finding in expected.items():
        number = 1 + [i.source.SOPInstanceUID for i in two_image_study].index(uid)
        call = "present" if finding.present else "absent"
        assert (
            f"{finding.name} (image {number}): probability {finding.probability:.4f}, "
            f"threshold {finding.threshold:g}, {call}; no region drawn."
        ) in texts


def test_untrained_model_disclaimer_and_review_notice_are_in_the_content(
    two_image_study, untrained, uids
):
    sr = build_structured_report(
        two_image_study, untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
    )

    texts = _texts(sr)
    assert untrained.disclaimer in texts
    assert "AI result — requires review by a radiologist" in texts
    assert sr.SeriesDescription.startswith("UNTRAINED AI findings (SR) - ")
    assert sr.SeriesDescription.endswith(" - requires review")
    assert len(sr.SeriesDescription) <= 64
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert sr.VerificationFlag == "UNVERIFIED"


def test_trained_model_sr_carries_the_review_notice_but_no_disclaimer(
    sources, read_source, make_result, trained, uids
):
    image = make_result(read_source(sources.rsna))

    sr = build_structured_report(
        [image], trained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
    )

    texts = _texts(sr)
    assert "AI result — requires review by a radiologist" in texts
    assert not any("NOT A TRAINED" in text for text in texts)
    assert sr.SeriesDescription == "AI findings (SR) - cxr-densenet 2.3.1 - requires review"


def test_sr_joins_the_source_study_with_the_patient_and_study_attributes(
    sources, read_source, make_result, untrained, uids
):
    source = read_source(sources.rsna)

    sr = build_structured_report(
        [make_result(source)],
        untrained,
        sop_instance_uid=uids("sr"),
        series_instance_uid=uids("s"),
        series_number=9901,
    )

    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
    ):
        assert sr[keyword].value == source[keyword].value, keyword
    # The RSNA export writes Patient's Age as "51", which is not an AS value; the results copy
    # it as it is, or the study would disagree with itself (dcentvfy).
    assert sr.PatientAge == source.PatientAge == "51"
    assert sr.SeriesInstanceUID == uids("s") != source.SeriesInstanceUID
    assert sr.SeriesNumber == 9901
    assert sr.Manufacturer == "cxrnode"
    assert sr.Modality == "SR"


def test_acr_nema_monochrome1_source_without_file_meta_gives_a_valid_sr(
    sources, read_source, make_result, untrained, uids, tmp_path, dciodvfy_errors, dsrdump
):
    source = read_source(sources.barre)
    assert source.PhotometricInterpretation == "MONOCHROME1"
    assert "PatientID" not in source

    sr = build_structured_report(
        [make_result(source)], untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
    )
    path = _write(sr, tmp_path)

    assert dciodvfy_errors(path) == []
    assert dsrdump(path).returncode == 0
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientID == ""
    assert back.AccessionNumber == source.AccessionNumber


def test_dx_source_with_orientation_and_spacing_gets_projection_descriptors(
    sources, read_source, make_result, untrained, uids, tmp_path, dciodvfy_errors, dsrdump
):
    path = _write(
        build_structured_report(
            [make_result(read_source(sources.dx))],
            untrained,
            sop_instance_uid=uids("sr"),
            series_instance_uid=uids("s"),
        ),
        tmp_path,
    )

    assert dciodvfy_errors(path) == []
    dump = dsrdump(path).stdout
    assert '"Patient Orientation Row")="L"' in dump
    assert '"Horizontal Pixel Spacing")' in dump


def test_present_finding_explained_by_the_heatmap_gets_its_region(
    sources, read_source, make_result, untrained, uids
):
    image = make_result(read_source(sources.rsna), heatmap_finding="Pneumothorax")
    assert image.finding("Pneumothorax").present

    sr = build_structured_report(
        [image], untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
    )

    regions = [item for item in _items(sr.ContentSequence) if item.ValueType == "SCOORD"]
    assert len(regions) == 1
    assert regions[0].GraphicType == "POLYLINE"
    columns, rows = regions[0].GraphicData[0::2], regions[0].GraphicData[1::2]
    heat = image.heatmaps["Pneumothorax"]
    peak_row, peak_col = divmod(int(heat.argmax()), heat.shape[1])
    assert min(columns) <= peak_col < max(columns)
    assert min(rows) <= peak_row < max(rows)
    # The box hugs the hot core, not the whole image.
    assert (max(columns) - min(columns)) < 0.5 * image.heatmaps["Pneumothorax"].shape[1]


def test_no_region_for_an_absent_finding(sources, read_source, make_result, untrained, uids):
    image = make_result(read_source(sources.rsna), heatmap_finding="Cardiomegaly")
    assert not image.finding("Cardiomegaly").present

    sr = build_structured_report(
        [image], untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
    )

    assert not [item for item in _items(sr.ContentSequence) if item.ValueType == "SCOORD"]
    # Nothing is outlined: no Imaging Measurements (TID 1500 row 6 is optional beside row 12).
    assert _groups(sr) == []
    assert "Cardiomegaly: probability 0.2456, threshold 0.5, absent; no region drawn." in _texts(sr)


@pytest.mark.parametrize("text_source", ["report", "indication", "none"])
def test_the_clinical_text_the_model_read_is_recorded(
    sources, read_source, make_result, untrained, uids, text_source
):
    sr = build_structured_report(
        [make_result(read_source(sources.nih))],
        untrained,
        sop_instance_uid=uids("sr"),
        series_instance_uid=uids("s"),
        text_source=text_source,
    )

    texts = _texts(sr)
    assert f"text_input={text_source}" in texts
    assert any(text.startswith("Clinical text used by the algorithm") for text in texts)


def test_local_label_codes_are_identified(sources, read_source, make_result, untrained, uids):
    sr = build_structured_report(
        [make_result(read_source(sources.nih))],
        untrained,
        sop_instance_uid=uids("sr"),
        series_instance_uid=uids("s"),
    )

    assert [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence] == [
        "99CXR"
    ]


def test_rebuilding_with_the_same_uids_gives_the_same_identifiers(
    sources, read_source, make_result, untrained, uids
):
    image = make_result(read_source(sources.rsna))

    first, again = (
        build_structured_report(
            [image], untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
        )
        for _ in range(2)
    )

    def identifiers(sr):
        return [item.UID for item in _items(sr.ContentSequence) if item.ValueType == "UIDREF"]

    assert identifiers(first) == identifiers(again)
    assert first.SOPInstanceUID == again.SOPInstanceUID == uids("sr")


def test_images_of_two_studies_are_refused(sources, read_source, make_result, untrained, uids):
    images = [make_result(read_source(sources.rsna)), make_result(read_source(sources.rsna_other))]

    with pytest.raises(ResultInputError, match="one study"):
        build_structured_report(
            images, untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
        )


def test_unknown_text_source_is_refused(sources, read_source, make_result, untrained, uids):
    with pytest.raises(ResultInputError, match="text_source"):
        build_structured_report(
            [make_result(read_source(sources.rsna))],
            untrained,
            sop_instance_uid=uids("sr"),
            series_instance_uid=uids("s"),
            text_source="history",
        )


def _rsna_sr(sources, read_source, make_result, untrained, uids):
    return build_structured_report(
        [make_result(read_source(sources.rsna))],
        untrained,
        sop_instance_uid=uids("sr"),
        series_instance_uid=uids("s"),
    )


def test_outlined_finding_has_the_layout_ohif_hydrates_into_a_named_measurement(
    sources, read_source, make_result, untrained, uids
):
    # OHIF's Cornerstone SR adapter picks the tool by the tracking identifier and looks for
    # the SCOORD under the group's first NUM (INFERRED FROM); its label is the group's Comment.
    sr = _rsna_sr(sources, read_source, make_result, untrained, uids)

    outlined = [
        g
        for g in _groups(sr)
        if _child(g, "TEXT", "Tracking Identifier").TextValue == CORNERSTONE_OUTLINE
    ]
    (group,) = outlined  # only Pneumothorax has a heatmap in the test results
    assert _child(group, "CODE", "Finding").ConceptCodeSequence[0].CodeMeaning == "Pneumothorax"
    number = next(i for i in group.ContentSequence if i.ValueType == "NUM")
    assert _meaning(number) == "Probability"
    scoord = _child(number, "SCOORD")
    assert scoord.RelationshipType == "INFERRED FROM"
    assert scoord.GraphicType == "POLYLINE"
    points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
    assert len(points) >= 4 and np.allclose(points[0], points[-1])  # closed: a freehand ROI
    (image,) = [i for i in scoord.ContentSequence if i.ValueType == "IMAGE"]
    source_uid = read_source(sources.rsna).SOPInstanceUID
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_uid
    assert _child(group, "TEXT", "Comment").TextValue == "Pneumothorax (AI p=0.90)"
    # Labels without a region are no measurement group (OHIF stops at one without a SCOORD).
    assert _groups(sr) == outlined


def test_sr_of_a_cr_stored_as_secondary_capture_passes_pixelmeds_validator(
    sources, read_source, make_result, untrained, uids, tmp_path, pixelmed_sr_errors
):
    # Before: the Image Library said Modality OT for the CR source (TID 1602) and the
    # procedure code was not in CID 100.
    sr = _rsna_sr(sources, read_source, make_result, untrained, uids)
    path = _write(sr, tmp_path)

    assert pixelmed_sr_errors(path) == []
    (modality,) = [
        i for i in _items(sr.ContentSequence) if i.ValueType == "CODE" and _meaning(i) == "Modality"
    ]
    assert modality.ConceptCodeSequence[0].CodeValue == "CR"


def test_sr_agrees_with_its_source_study_for_dcentvfy(
    sources, read_source, make_result, untrained, uids, tmp_path, dcentvfy_errors
):
    # Before: Patient's Age "51" in the source, "051Y" in the SR.
    sr = _rsna_sr(sources, read_source, make_result, untrained, uids)

    assert dcentvfy_errors(sources.rsna, _write(sr, tmp_path)) == []
