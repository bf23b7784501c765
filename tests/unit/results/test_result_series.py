"""A run's result objects, written series by series as the settings' result series say."""

from __future__ import annotations

import pickle

import pydicom
import pytest

from node.build import BuildOptions, ResultJob, write_results
from node.config import DEFAULT_RESULT_SERIES, Settings, load_settings, parse_destination
from node.errors import ConfigError
from storage.spool import FileStore
from support.work_items import work_item


def _item(study_uid: str):
    return work_item(study_uid, run=2)


@pytest.fixture
def two_images(sources, read_source, make_result):
    # Two images of one study: the second with two present findings that have a heatmap.
    first = make_result(read_source(sources.rsna))
    second_source = read_source(sources.rsna_other)
    second_source.StudyInstanceUID = first.source.StudyInstanceUID
    second = make_result(second_source)
    second.heatmaps["Atelectasis"] = second.heatmaps["Pneumothorax"][::-1].copy()
    return [first, second]


def test_each_series_gets_its_number_and_description_and_the_sr_comes_first(
    tmp_path, two_images, untrained
):
    settings = load_settings(
        environ={
            "CXRNODE_SR_SERIES_NUMBER": "7001",
            "CXRNODE_FINDING_SC_SERIES_NUMBER": "7003",
            "CXRNODE_GSPS_SERIES_DESCRIPTION": "AI regions - requires review",
        }
    )
    results = FileStore(tmp_path / "results")
    study_uid = str(two_images[0].source.StudyInstanceUID)
    job = ResultJob(_item(study_uid), BuildOptions.of(settings), results, untrained, False)
    built = write_results(job, two_images)

    objects = [pydicom.dcmread(results.path(b.relpath)) for b in built]
    series = [
        (b.kind, ds.get("ImageType", [""])[-1], int(ds.SeriesNumber), int(ds.InstanceNumber))
        for b, ds in zip(built, objects, strict=True)
    ]
    assert series == [
        ("SR", "", 7001, 1),
        ("GSPS", "", 9904, 1),
        ("GSPS", "", 9904, 2),
        ("SC", "OVERVIEW", 9902, 1),
        ("SC", "OVERVIEW", 9902, 2),
        ("SC", "FINDING", 7003, 1),  # the first image's Pneumothorax
        ("SC", "FINDING", 7003, 2),  # the second's Pneumothorax, then its Atelectasis
        ("SC", "FINDING", 7003, 3),
    ]
    descriptions = {b.kind: ds.SeriesDescription for b, ds in zip(built, objects, strict=True)}
    assert descriptions["GSPS"] == "AI regions - requires review"
    assert descriptions["SR"].startswith("UNTRAINED AI findings (SR)")
    # One series per kind of object, all in the source's study.
    assert len({ds.SeriesInstanceUID for ds in objects}) == 4
    assert {ds.StudyInstanceUID for ds in objects} == {study_uid}
    assert [b.sop_uid for b in built] == [str(ds.SOPInstanceUID) for ds in objects]


def test_only_the_series_some_destination_gets_are_built(tmp_path, two_images, untrained):
    settings = Settings(outputs=("SR", "GSPS")).validate()
    options = BuildOptions.of(settings)
    assert [s.kind for s in options.series] == ["sr", "gsps"]
    study_uid = str(two_images[0].source.StudyInstanceUID)
    job = ResultJob(_item(study_uid), options, FileStore(tmp_path), untrained, False)
    assert [b.kind for b in write_results(job, two_images)] == ["SR", "GSPS", "GSPS"]


def test_a_job_carries_only_the_settings_the_builders_read(tmp_path, untrained):
    settings = Settings(
        admin_token="a-secret-admin-token", tls_cert="/etc/node.crt", tls_key="/etc/node.key"
    ).validate()
    job = ResultJob(_item("1.2.3"), BuildOptions.of(settings), FileStore(tmp_path), untrained, True)
    sent = pickle.dumps(job)
    assert b"a-secret-admin-token" not in sent and b"node.key" not in sent
    assert pickle.loads(sent).options == BuildOptions(DEFAULT_RESULT_SERIES, 0.5)


def test_each_hl7_destination_gets_its_own_result_message_naming_the_runs_sr(
    tmp_path, two_images, untrained
):
    hl7 = pytest.importorskip("hl7", reason="python-hl7 (the dev extra) is not installed")
    settings = Settings(
        destinations=(
            parse_destination("PACS@pacs:104"),
            parse_destination("mllp://RIS^HOSP@ris:2576"),
            parse_destination("mllp://ris2:2577"),
        ),
        critical_findings=("Pneumothorax",),
        hl7_result_version="2.4",
    ).validate()
    results = FileStore(tmp_path)
    study_uid = str(two_images[0].source.StudyInstanceUID)
    job = ResultJob(_item(study_uid), BuildOptions.of(settings), results, untrained, False)
    built = write_results(job, two_images)
    messages = [b for b in built if b.kind == "ORU"]
    assert [b.destination for b in messages] == ["mllp://RIS^HOSP@ris:2576", "mllp://ris2:2577"]
    assert all(b.destination is None for b in built if b.kind != "ORU")
    sr = next(b for b in built if b.kind == "SR")
    first = hl7.parse(results.path(messages[0].relpath).read_bytes().decode("utf-8"))
    assert (str(first.segment("MSH")[5]), str(first.segment("MSH")[12])) == ("RIS", "2.4")
    assert str(first.segment("MSH")[10]) == messages[0].sop_uid
    assert str(first.segment("OBR")[25]) == "C"  # the item is run 2: a corrected result
    pointer = next(s for s in first if str(s[0]) == "OBX" and str(s[2]) == "RP")
    assert str(pointer[5]).split("^")[0] == sr.sop_uid
    # Rebuilt after a crash, the same messages: the outbox keys stay the same.
    assert [b.sop_uid for b in write_results(job, two_images) if b.kind == "ORU"] == [
        b.sop_uid for b in messages
    ]


def test_destinations_of_every_transport_parse_and_choose_what_they_get() -> None:
    settings = load_settings(
        environ={
            "CXRNODE_DESTINATIONS": "PACS@pacs:104,https://ai:pw@dw.example/dicom-web,"
            "mllps://ris:2576",
            "CXRNODE_TLS_CERT": "/c.pem",
            "CXRNODE_TLS_KEY": "/k.pem",
            "CXRNODE_TLS_CA": "/ca.pem",
        }
    )
    dicom, stow, ris = settings.destinations
    assert str(stow) == "https://dw.example:443/dicom-web/studies"  # no credentials
    assert settings.outputs_for(ris) == ("ORU",)
    assert settings.outputs_for(stow) == settings.outputs_for(dicom)
    assert settings.known_calling_aes == ("PACS@pacs",)
    assert settings.hl7_destinations == (ris,)
    with pytest.raises(ConfigError, match="mllps:// destination needs"):
        Settings(destinations=(ris,)).validate()
    with pytest.raises(ConfigError, match="hl7_result_version"):
        Settings(hl7_result_version="3.0").validate()
