"""Result objects of a run: the SR, presentation states and captures, built and written durably.

Nothing here imports torch: the worker may run :func:`write_results` in a separate process, so
that building one batch's objects (Python- and Pillow-bound) overlaps the next batch's inference.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.uid import generate_uid

from models.text import ReportText
from node.config import Settings
from node.log_privacy import withhold_dicom_values_from_the_log
from node.results import (
    AlgorithmInfo,
    ImageResult,
    build_finding_capture,
    build_overview,
    build_presentation_state,
    build_structured_report,
)
from storage.identifiers import StudyIds
from storage.spool import FileStore, results_folder


def keep_identifiers_out_of_the_log() -> None:
    """Identifiers belong in the audit log, not the application log: silence what libraries
    would print with them (highdicom logs a UID per copied module at INFO; pydicom warns with
    the patient's name when it has a single component, and quotes invalid values, UIDs
    included, in its log and warnings). Also the builder processes' initializer."""
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    withhold_dicom_values_from_the_log()
    warnings.filterwarnings(
        "ignore", message=r"(?s)The string .* is unlikely to represent the intended person name"
    )


@dataclass(frozen=True)
class WorkItem:
    """What a worker needs of a claimed job, detached from the database session."""

    job_id: int
    run: int
    study_uid: str
    accession: str | None
    patient_id: str | None
    images: tuple[tuple[str, str], ...]  # (SOP Instance UID, spool path) of each model input
    text: ReportText | None  # the report or indication with its sections; cleaned by the predictor
    text_source: str  # "report" | "indication" | "none"
    reason: str
    replaces_sr: str | None  # results path of the SR this run supersedes

    @property
    def ids(self) -> StudyIds:
        """The study's identifiers; they unpack as audit keywords too (``**item.ids``)."""
        return StudyIds.of(self)


@dataclass(frozen=True)
class BuiltResult:
    kind: str  # "SR" | "SC" | "GSPS" (node.config.OUTPUT_KINDS)
    sop_uid: str
    relpath: str


@dataclass(frozen=True)
class ResultJob:
    """Everything :func:`write_results` needs besides the images, picklable."""

    item: WorkItem
    settings: Settings
    results: FileStore
    algorithm: AlgorithmInfo
    reads_text: bool


def write_results(job: ResultJob, images: list[ImageResult]) -> list[BuiltResult]:
    """Build a run's SR, presentation states and captures and write each durably; return what
    was written, SR first."""

    # UIDs derive from the study and run, so rebuilding after a crash produces the same
    # objects and a destination that already stored them sees a harmless duplicate.
    def uid(*parts: str) -> str:
        return generate_uid(entropy_srcs=["cxrnode", item.study_uid, str(item.run), *parts])

    item, settings, results = job.item, job.settings, job.results
    folder = results_folder(item.study_uid, item.run)
    wanted = settings.wanted_outputs
    level = settings.region_level
    # A re-run (late or corrected report) is a new series of each kind, so viewers hang it
    # beside the results it replaces rather than mixing the two.
    sr_uid = uid("sr")
    built = []
    if "SR" in wanted:
        sr = build_structured_report(
            images,
            job.algorithm,
            sop_instance_uid=sr_uid,
            series_instance_uid=uid("sr-series"),
            series_number=settings.sr_series_number,
            text_source=item.text_source if job.reads_text else "none",
            text_note=_text_note(item, job.reads_text),
            predecessors=([dcmread(results.path(item.replaces_sr))] if item.replaces_sr else ()),
            region_level=level,
            description=settings.sr_series_description or None,
        )
        built.append(_save(results, "SR", sr, folder))
    finding_number = 0
    for n, image in enumerate(images, start=1):
        source_uid = str(image.source.SOPInstanceUID)
        if "GSPS" in wanted:
            state = build_presentation_state(
                image,
                job.algorithm,
                sop_instance_uid=uid("gsps", source_uid),
                series_instance_uid=uid("gsps-series"),
                series_number=settings.gsps_series_number,
                instance_number=n,
                region_level=level,
                description=settings.gsps_series_description or None,
                sr_instance_uid=sr_uid,
            )
            built.append(_save(results, "GSPS", state, folder))
        if "SC" not in wanted:
            continue
        overview = build_overview(
            image,
            job.algorithm,
            sop_instance_uid=uid("sc", source_uid),
            series_instance_uid=uid("sc-series"),
            series_number=settings.sc_series_number,
            instance_number=n,
            region_level=level,
            description=settings.sc_series_description or None,
        )
        built.append(_save(results, "SC", overview, folder))
        for finding in image.present:
            if finding.name not in image.heatmaps:
                continue
            finding_number += 1
            capture = build_finding_capture(
                image,
                finding.name,
                job.algorithm,
                sop_instance_uid=uid("sc-finding", source_uid, finding.name),
                series_instance_uid=uid("sc-finding-series"),
                series_number=settings.finding_sc_series_number,
                instance_number=finding_number,
                region_level=level,
                description=settings.finding_sc_series_description or None,
            )
            built.append(_save(results, "SC", capture, folder))
    return built


def _save(results: FileStore, kind: str, ds, folder: str) -> BuiltResult:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    relpath = f"{folder}/{kind}-{ds.SOPInstanceUID}.dcm"
    results.write(relpath, buffer.getvalue())
    return BuiltResult(kind, str(ds.SOPInstanceUID), relpath)


def _text_note(item: WorkItem, reads_text: bool) -> str | None:
    """Why the run read the text it read, in the radiologist's words."""
    if not reads_text:
        return "this model reads images only" if item.text else None
    if item.reason != "first":
        return f"re-run after a {item.reason}"
    if item.text_source == "none":
        return "no report or order arrived within the pairing window"
    if item.text_source == "indication":
        return "no report arrived within the pairing window"
    return None


def build_in_process(job: ResultJob, images: list[ImageResult]) -> tuple[list[BuiltResult], float]:
    """:func:`write_results`, also returning the seconds it took where it ran (a builder
    process's own time, not the worker's wait for it)."""
    clock = time.perf_counter()
    return write_results(job, images), time.perf_counter() - clock
