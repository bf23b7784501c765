"""Result objects of a run: the SR, presentation states and captures, built and written durably.

Nothing here imports torch: the worker may run :func:`write_results` in a separate process, so
that building one batch's objects (Python- and Pillow-bound) overlaps the next batch's inference.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from models.text import ReportText
from node.config import HL7_KIND, ResultSeries, Settings
from node.hl7out.oru import MessageOptions, ResultObjects, build_oru, run_result
from node.log_privacy import withhold_dicom_values_from_the_log
from node.results import (
    AlgorithmInfo,
    ImageResult,
    build_finding_capture,
    build_overview,
    build_presentation_state,
    build_structured_report,
)
from node.results.findings import GRADCAM, INTEGRATED_GRADIENTS
from node.results.notices import summary
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
    kind: str  # "SR" | "SC" | "GSPS" (node.config.OUTPUT_KINDS), or "ORU" (HL7_KIND)
    sop_uid: str  # an HL7 message's MSH-10
    relpath: str
    destination: str | None = None  # the one destination it is for (HL7 messages), or any


@dataclass(frozen=True)
class BuildOptions:
    """The settings the builders read, and nothing else of `Settings` (a builder process is
    sent them with every job).

    Attributes
    ----------
    series : tuple of ResultSeries
        The result series to write, in order: those of the settings at least one destination
        gets (`Settings.wanted_outputs`).
    region_level : float
        Fraction of the Grad-CAM peak a finding's region encloses.
    """

    series: tuple[ResultSeries, ...]
    region_level: float
    # Each HL7 destination's key and how its ORU^R01 is written.
    messages: tuple[tuple[str, MessageOptions], ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> BuildOptions:
        wanted = settings.wanted_outputs
        series = tuple(s for s in settings.result_series if s.output in wanted)
        messages = tuple(
            (
                str(d),
                MessageOptions(
                    version=settings.hl7_result_version,
                    sending_application=settings.ae_title,
                    sending_facility=settings.hl7_sending_facility,
                    receiving_application=d.receiving_application,
                    receiving_facility=d.receiving_facility,
                    critical=frozenset(settings.critical_findings),
                ),
            )
            for d in settings.hl7_destinations
        )
        return cls(series, settings.region_level, messages)


@dataclass(frozen=True)
class ResultJob:
    """Everything :func:`write_results` needs besides the images, picklable."""

    item: WorkItem
    options: BuildOptions
    results: FileStore
    algorithm: AlgorithmInfo
    reads_text: bool

    def uid(self, *parts: str) -> str:
        """A UID of the run's results. UIDs derive from the study and run, so rebuilding after
        a crash produces the same objects and a destination that already stored them sees a
        harmless duplicate; and a re-run (late or corrected report) is a new series of each
        kind, which viewers hang beside the results it replaces rather than mixing the two."""
        return generate_uid(
            entropy_srcs=["cxrnode", self.item.study_uid, str(self.item.run), *parts]
        )


def write_results(job: ResultJob, images: list[ImageResult]) -> list[BuiltResult]:
    """Build a run's objects, series by series (`BuildOptions.series`: the SR first), and write
    each durably; return what was written."""
    folder = results_folder(job.item.study_uid, job.item.run)
    built = [
        _save(job.results, series.output, ds, folder)
        for series in job.options.series
        for ds in _WRITERS[series.kind](job, images, series)
    ]
    return built + _result_messages(job, images, folder)


def _result_messages(job: ResultJob, images: list[ImageResult], folder: str) -> list[BuiltResult]:
    """One ORU^R01 per HL7 destination (`node.hl7out.oru`), naming the run's SR if it has one.
    Its control id derives from the run's UIDs, so a rebuild writes the same message."""
    if not job.options.messages:
        return []
    has_sr = any(series.output == "SR" for series in job.options.series)
    objects = ResultObjects(
        job.item.study_uid,
        job.uid("sr-series") if has_sr else None,
        job.uid("sr") if has_sr else None,
    )
    result = run_result(images, job.algorithm, objects, summary(images)[1], job.item.run)
    built = []
    for n, (destination, options) in enumerate(job.options.messages, start=1):
        control_id = job.uid("oru", destination).replace(".", "")[-20:]
        message = build_oru(result, options, control_id=control_id)
        relpath = f"{folder}/ORU-{n}-{control_id}.hl7"
        job.results.write(relpath, message.data)
        built.append(BuiltResult(HL7_KIND, control_id, relpath, destination))
    return built


def _structured_report(
    job: ResultJob, images: list[ImageResult], series: ResultSeries
) -> Iterator[Dataset]:
    item = job.item
    yield build_structured_report(
        images,
        job.algorithm,
        sop_instance_uid=job.uid("sr"),
        series_instance_uid=job.uid("sr-series"),
        series_number=series.number,
        text_source=item.text_source if job.reads_text else "none",
        text_note=_text_note(item, job.reads_text),
        predecessors=([dcmread(job.results.path(item.replaces_sr))] if item.replaces_sr else ()),
        region_level=job.options.region_level,
        description=series.description or None,
    )


def _presentation_states(
    job: ResultJob, images: list[ImageResult], series: ResultSeries
) -> Iterator[Dataset]:
    for n, image in enumerate(images, start=1):
        yield build_presentation_state(
            image,
            job.algorithm,
            sop_instance_uid=job.uid("gsps", str(image.source.SOPInstanceUID)),
            series_instance_uid=job.uid("gsps-series"),
            series_number=series.number,
            instance_number=n,
            region_level=job.options.region_level,
            description=series.description or None,
            sr_instance_uid=job.uid("sr"),
        )


def _overviews(
    job: ResultJob, images: list[ImageResult], series: ResultSeries
) -> Iterator[Dataset]:
    for n, image in enumerate(images, start=1):
        yield build_overview(
            image,
            job.algorithm,
            sop_instance_uid=job.uid("sc", str(image.source.SOPInstanceUID)),
            series_instance_uid=job.uid("sc-series"),
            series_number=series.number,
            instance_number=n,
            region_level=job.options.region_level,
            description=series.description or None,
        )


def _finding_captures(
    job: ResultJob, images: list[ImageResult], series: ResultSeries
) -> Iterator[Dataset]:
    return _method_captures(job, images, series, GRADCAM, "sc-finding")


def _attribution_captures(
    job: ResultJob, images: list[ImageResult], series: ResultSeries
) -> Iterator[Dataset]:
    """The Integrated Gradients capture of each present finding that has one (none unless
    the package asks for them: the worker computes no map otherwise)."""
    return _method_captures(job, images, series, INTEGRATED_GRADIENTS, "sc-ig")


def _method_captures(
    job: ResultJob, images: list[ImageResult], series: ResultSeries, method: str, uid_kind: str
) -> Iterator[Dataset]:
    shown = [
        (image, f.name) for image in images for f in image.present if f.name in image.maps(method)
    ]
    for n, (image, finding) in enumerate(shown, start=1):
        yield build_finding_capture(
            image,
            finding,
            job.algorithm,
            sop_instance_uid=job.uid(uid_kind, str(image.source.SOPInstanceUID), finding),
            series_instance_uid=job.uid(f"{uid_kind}-series"),
            series_number=series.number,
            instance_number=n,
            region_level=job.options.region_level,
            description=series.description or None,
            method=method,
        )


# What builds each result series (`ResultSeries.kind`): the objects of one run, in order.
_WRITERS: dict[str, Callable[[ResultJob, list[ImageResult], ResultSeries], Iterator[Dataset]]] = {
    "sr": _structured_report,
    "gsps": _presentation_states,
    "sc": _overviews,
    "finding_sc": _finding_captures,
    "ig_sc": _attribution_captures,
}


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
    if item.reason == "admin request":  # node.reprocess.RERUN_REASON
        return "re-run at an admin's request"
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
