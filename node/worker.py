"""The inference worker: from a queued job to result objects in the outbox.

``process_next`` claims queued jobs (up to ``batch_studies`` at once), decodes and preprocesses
their images, runs the model and Grad-CAM over all of them in one batch; a builder process
writes each job's SR, presentation states and captures durably (``node.build``) while the next
batch is inferred, then each is put in the outbox of the destinations configured to get its
kind (``node.delivery`` sends them), in the transaction that stores its images' embeddings for
case search (``storage.embeddings``). Each state change is one database transaction, so a step
is safe to repeat after a crash. Only a node whose role works creates one: the model is loaded
here and nowhere else.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from models.attribution import integrated_gradients_on_grid
from models.errors import PreprocessingError
from models.package import LabelConfig
from models.pixel_limits import check_deflated_file
from models.predictor import CamGrid, Predictor, labels_to_explain
from models.preprocess import decode_pixels, pixels_to_display
from models.text import ReportText
from node.build import (
    BuildOptions,
    ResultJob,
    WorkItem,
    build_in_process,
    keep_identifiers_out_of_the_log,
)
from node.config import Settings
from node.disk import data_paths, is_disk_full, lowest_free_bytes
from node.results import (
    AlgorithmInfo,
    GridHeatmap,
    ImageResult,
    display_levels,
    model_findings,
)
from node.results.findings import INTEGRATED_GRADIENTS
from storage import audit, embeddings, jobs, outbox
from storage.actions import Action
from storage.audit import Outcome
from storage.database import Database
from storage.run_summary import ImageSummary, InferenceCompleted, RunSummary
from storage.schema import Job, JobState, change_state, utcnow
from storage.spool import FileStore
from storage.studies import processable_instances

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Run:
    """A claimed job on its way through the worker: decoded images, then model results."""

    item: WorkItem
    # (source header without its pixel data, display) of each decoded image; both lists are
    # emptied once the result objects are handed to the builder, so that the worker holds the
    # images of one batch at a time.
    images: list[tuple[Dataset, np.ndarray]] = field(default_factory=list)
    results: list[ImageResult] = field(default_factory=list)
    summary_images: list[ImageSummary] = field(default_factory=list)  # what the audit keeps
    # (SOP Instance UID, the model's embedding) of each image, stored with the results.
    embeddings: list[tuple[str, np.ndarray]] = field(default_factory=list)
    unreadable: int = 0
    batch_studies: int = 0  # how many studies shared its forward pass
    timings: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds


def _grid_heatmaps(
    labels: tuple[LabelConfig, ...], indices: list[int], grid: CamGrid
) -> dict[str, GridHeatmap]:
    """Each explained label's map at the model's grid, for the builder to draw."""
    return {
        labels[i].name: GridHeatmap(heat, grid.size, grid.region)
        for i, heat in zip(indices, grid.maps, strict=True)
    }


class JobFailed(Exception):
    """A job cannot produce results; the message says why."""


class Worker:
    """Runs queued jobs through the model and the result builders, over one database, spool
    and model.

    Parameters
    ----------
    settings:
        The node's settings (batch and image caps, disk space, builders, destinations).
    db:
        The node's database: the job queue, the outbox and the audit log.
    spool, results:
        Where the received instances lie, and where the result objects are written.
    predictor:
        The loaded model.
    on_results:
        Called after runs were put in the outbox, so that delivery can start at once.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        spool: FileStore,
        results: FileStore,
        predictor: Predictor,
        on_results: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.spool = spool
        self.results = results
        self.predictor = predictor
        self.on_results = on_results
        config = predictor.package.config
        self.reads_text = config.uses_text
        # Integrated Gradients captures cost DEFAULT_STEPS passes per present finding: drawn
        # only where the package asks for them.
        self.integrated_gradients = INTEGRATED_GRADIENTS in config.explanation_captures
        self.algorithm = AlgorithmInfo(
            name=config.name,
            version=config.version,
            package_sha256=config.weights_sha256,
            trained=config.trained,
            disclaimer=config.disclaimer,
        )
        self._builders: ProcessPoolExecutor | None = None  # started by start_builders
        self._building: list[tuple[_Run, Future]] = []  # runs whose objects are being built
        self._disk_low = False  # the worker is paused for disk space
        # Disk-full deferrals the database could not record yet, by job id.
        self._deferrals: dict[int, tuple[WorkItem, BaseException]] = {}

    def process_next(self, limit: int = 1) -> int:
        """Claim up to ``limit`` queued jobs and process them together: their images go through
        one batched forward pass and one batched Grad-CAM, then their result objects are built
        (in a builder process, when there is one) while the next call infers the next batch.
        Commit the previous call's runs; return how many jobs were claimed (0: the queue was
        empty). A job that fails fails alone."""
        if not self._settle_deferrals() or not self._disk_has_room():
            return 0
        clock = time.perf_counter()
        items = self._claim(limit)
        claim_s = time.perf_counter() - clock
        runs = []
        for item in items:
            try:
                runs.append(self._decode(item))
            except JobFailed as exc:
                self._fail(item, str(exc))
            except Exception as exc:  # a bug or a resource error must not stop the worker
                if is_disk_full(exc):
                    self._defer_for_disk(item, exc)
                    continue
                log.exception("job %d failed", item.job_id)
                self._fail(item, f"internal error: {type(exc).__name__}: {exc}")
        building = []
        for run in self._infer_isolating(runs):
            run.timings["database_s"] = claim_s / len(items)
            building.append((run, self._build(run)))
            run.images, run.results = [], []  # the builder has them now
        # The previous call's runs were built while this batch was decoded and inferred.
        previous, self._building = self._building, building
        self._commit(previous)
        if self._builders is None:
            self.flush()
        return len(items)

    def flush(self) -> int:
        """Wait for the result objects being built, put each run's in the outbox, and return
        how many runs were committed."""
        building, self._building = self._building, []
        self._commit(building)
        return len(building)

    def _commit(self, building: list[tuple[_Run, Future]]) -> None:
        """Put each run's built objects in the outbox (or fail, defer or requeue it), then tell
        ``on_results``."""
        for run, future in building:
            try:
                self._finish(run, future)
            except Exception as exc:  # one run's failure must not drop the others
                if is_disk_full(exc):
                    self._defer_for_disk(run.item, exc)
                    continue
                log.exception("job %d failed", run.item.job_id)
                self._fail(run.item, f"internal error: {type(exc).__name__}: {exc}")
        if building and self.on_results is not None:
            self.on_results()

    # A full disk -----------------------------------------------------------------------

    def _disk_has_room(self) -> bool:
        """Whether the data directory's disks have ``min_free_disk_mb`` free; the worker claims
        nothing while they have not (logged, and audited once, when it starts and ends)."""
        free = lowest_free_bytes(data_paths(self.settings))
        low = free <= self.settings.min_free_disk_mb * 1024 * 1024
        if low != self._disk_low:
            self._disk_low = low
            log.warning("worker %s: %d MiB free", "paused" if low else "resumed", free >> 20)
            try:
                with self.db.transaction() as session:
                    audit.record(
                        session,
                        Action.WORKER_PAUSED if low else Action.WORKER_RESUMED,
                        Outcome.WARNING if low else Outcome.SUCCESS,
                        detail={
                            "reason": "free disk below min_free_disk_mb",
                            "free_mb": free >> 20,
                            "min_free_disk_mb": self.settings.min_free_disk_mb,
                        },
                    )
            except Exception:  # the database's disk may be the full one
                log.exception("could not audit the worker pausing for disk space")
        return not low

    def _defer_for_disk(self, item: WorkItem, exc: BaseException) -> None:
        """A run that met a full disk (ENOSPC writing its results, SQLite's "disk is full"):
        queue it again after ``disk_full_retry_s`` (doubling with each claim), or fail it once
        it was claimed ``max_job_attempts`` times; audited either way. When even that cannot
        be recorded, the worker keeps it and records it before it claims anything else."""
        reason = f"disk full: {_describe(exc)}"
        log.error("job %d: %s", item.job_id, reason)
        try:
            with self.db.transaction() as session:
                job = session.get(Job, item.job_id)
                if job.attempts >= self.settings.max_job_attempts:
                    jobs.fail(session, job, f"{reason}, {job.attempts} times")
                    action, outcome, retry_s = Action.JOB_FAILED, Outcome.FAILURE, None
                else:
                    retry_s = self.settings.disk_full_retry_s * 2 ** max(job.attempts - 1, 0)
                    jobs.requeue(session, job, not_before=utcnow() + timedelta(seconds=retry_s))
                    action, outcome = Action.JOB_DEFERRED, Outcome.FAILURE
                audit.record(
                    session,
                    action,
                    outcome,
                    **item.ids,
                    detail={
                        "run": item.run,
                        "reason": reason,
                        "attempts": job.attempts,
                        "retry_in_s": retry_s,
                    },
                )
        except Exception:
            log.exception("job %d: the full disk cannot be recorded yet", item.job_id)
            self._deferrals[item.job_id] = (item, exc)

    def _settle_deferrals(self) -> bool:
        """Record the disk-full deferrals the database could not take; True once none wait."""
        for item, exc in list(self._deferrals.values()):
            del self._deferrals[item.job_id]
            self._defer_for_disk(item, exc)
        return not self._deferrals

    def close(self) -> None:
        """Commit what is being built and stop the builder processes."""
        self.flush()
        if self._builders is not None:
            self._builders.shutdown()
            self._builders = None

    def start_builders(self) -> None:
        """Start the builder processes, if the settings want any and they are not running.

        A worker calls it when it starts: a spawned builder takes seconds to import what it
        needs, which the first study would otherwise wait for. A node that only receives never
        starts them."""
        if self._builders is None and self.settings.build_processes:
            self._builders = _builder_pool(self.settings.build_processes)

    def _build(self, run: _Run) -> Future:
        options = BuildOptions.of(self.settings)
        job = ResultJob(run.item, options, self.results, self.algorithm, self.reads_text)
        self.start_builders()
        if self._builders is None:
            future: Future = Future()
            try:
                future.set_result(build_in_process(job, run.results))
            except Exception as exc:
                future.set_exception(exc)
            return future
        try:
            return self._builders.submit(build_in_process, job, run.results)
        except BrokenProcessPool:  # a builder died (e.g. killed for memory): start afresh
            log.error("a result builder process died; starting new ones")
            self._builders.shutdown(wait=False)
            self._builders = _builder_pool(self.settings.build_processes)
            return self._builders.submit(build_in_process, job, run.results)

    def _claim(self, limit: int) -> list[WorkItem]:
        """Claim a batch (``jobs.claim_batch``): at most ``limit`` studies and, beyond its first
        study, ``max_run_images`` model images; each run reads at most ``max_run_images``
        images, the others skipped and audited."""
        cap = self.settings.max_run_images
        with self.db.transaction() as session:
            items = []
            for job in jobs.claim_batch(session, limit, max_images=cap):
                inputs = processable_instances(job.study)
                item = WorkItem(
                    job_id=job.id,
                    run=job.run,
                    study_uid=job.study.study_uid,
                    accession=job.study.accession,
                    patient_id=job.study.patient_id,
                    images=tuple((i.sop_uid, i.path) for i in inputs[:cap]),
                    text=ReportText(job.report.text, job.report.sections) if job.report else None,
                    text_source=job.text_source,
                    reason=job.reason,
                    replaces_sr=_sr_path(job.replaces),
                )
                for instance in inputs[cap:]:
                    audit.record(
                        session,
                        Action.IMAGE_SKIPPED,
                        Outcome.WARNING,
                        **{**item.ids, "sop_uid": instance.sop_uid},
                        detail={
                            "run": job.run,
                            "reason": f"a run reads at most {cap} images (max_run_images)",
                        },
                    )
                items.append(item)
            return items

    def _decode(self, item: WorkItem) -> _Run:
        """Read and decode every model input of a job; raise ``JobFailed`` when none decodes."""
        run = _Run(item)
        failures = []
        for sop_uid, relpath in item.images:
            try:
                clock = time.perf_counter()
                path = self.spool.path(relpath)
                # Again in the worker: files spooled before a limit existed, or changed since.
                check_deflated_file(path, self.settings.max_decoded_bytes)
                ds = dcmread(path, force=True)
                pixels, photometric = decode_pixels(ds, self.settings.max_decoded_bytes)
                decoded = time.perf_counter()
                display = pixels_to_display(ds, pixels, photometric)
                run.add_time("decode_s", decoded - clock)
                run.add_time("preprocess_s", time.perf_counter() - decoded)
                run.images.append((_without_pixels(ds), display))
            except (PreprocessingError, ValueError, OSError, NotImplementedError) as exc:
                failures.append({"sop_uid": sop_uid, "reason": str(exc)})
        run.unreadable = len(failures)
        if failures:
            with self.db.transaction() as session:
                for failure in failures:
                    audit.record(
                        session,
                        Action.IMAGE_UNREADABLE,
                        Outcome.FAILURE,
                        **{**item.ids, "sop_uid": failure["sop_uid"]},
                        detail={"reason": failure["reason"]},
                    )
        if not run.images:
            raise JobFailed("no image of the study could be decoded")
        return run

    def _infer_isolating(self, runs: list[_Run]) -> list[_Run]:
        """Run the model over ``runs`` together; when the batch fails, each run again alone,
        so that one bad study fails only itself. Return the runs that have predictions."""
        try:
            self._infer(runs)
            return runs
        except Exception as exc:  # a bug or a resource error must not stop the worker
            if len(runs) > 1:
                return [ok for run in runs for ok in self._infer_isolating([run])]
            log.exception("job %d failed", runs[0].item.job_id)
            self._fail(runs[0].item, f"internal error: {type(exc).__name__}: {exc}")
            return []

    def _infer(self, runs: list[_Run]) -> None:
        displays = [display for run in runs for _, display in run.images]
        texts = None
        if self.reads_text:
            texts = [run.item.text for run in runs for _ in run.images]
        clock = time.perf_counter()
        # Preprocessed and encoded once, for the prediction and the Grad-CAM alike.
        prepared = self.predictor.prepare(displays, texts)
        predictions = self.predictor.predict(prepared)
        inferred = time.perf_counter()
        # Every present finding gets its region and capture; the top one is explained even
        # when absent, for the overview.
        explained = [labels_to_explain(p) for p in predictions]
        maps = self.predictor.explain_on_grid(prepared, explained)
        explained_at = time.perf_counter()
        attributed = [[int(i) for i in np.flatnonzero(p.present)] for p in predictions]
        if self.integrated_gradients and any(attributed):
            ig_maps = integrated_gradients_on_grid(self.predictor, prepared, attributed)[0]
        else:
            ig_maps = [None] * len(predictions)
        attributed_at = time.perf_counter()
        labels = self.predictor.package.config.labels
        results = iter(zip(predictions, explained, maps, attributed, ig_maps, strict=True))
        per_run = []
        for run in runs:
            images, vectors = [], []
            for ds, display in run.images:
                prediction, indices, image_maps, ig_indices, ig_grid = next(results)
                findings = model_findings(labels, prediction.probabilities)
                heatmaps = _grid_heatmaps(labels, indices, image_maps)
                attributions = _grid_heatmaps(labels, ig_indices, ig_grid) if ig_grid else {}
                # The builder draws the display's 256 grey levels, and the heatmaps from the
                # model's grid: a quarter and a few hundred bytes of the float32 images.
                levels = display_levels(display)
                images.append(ImageResult(ds, levels, findings, heatmaps, attributions))
                vectors.append((str(ds.SOPInstanceUID), prediction.embedding))
            per_run.append((images, vectors))
        # Only now, when nothing can fail any more: a batch that failed is retried run by run.
        for run, (images, vectors) in zip(runs, per_run, strict=True):
            run.results = images
            run.embeddings = vectors
            run.summary_images = [_image_summary(image) for image in images]
            run.batch_studies = len(runs)
            # The batch's model time, shared out by images.
            share = len(run.images) / len(displays)
            run.add_time("inference_s", (inferred - clock) * share)
            run.add_time("gradcam_s", (explained_at - inferred) * share)
            if self.integrated_gradients:
                run.add_time("integrated_gradients_s", (attributed_at - explained_at) * share)

    def _finish(self, run: _Run, building: Future) -> None:
        """Put a run's built result objects in the outbox and store its embeddings, in one
        transaction."""
        item = run.item
        try:
            built, build_s = building.result()
        except BrokenProcessPool:
            # The builder died under the run (killed for memory, say), not because of it:
            # run it again, as after a crash of the node, unless it keeps happening.
            self._requeue_or_fail(item, "a result builder process died")
            return
        except Exception as exc:
            if is_disk_full(exc):
                self._defer_for_disk(item, exc)
                return
            log.error("job %d failed", item.job_id, exc_info=exc)
            self._fail(item, f"internal error: {type(exc).__name__}: {exc}")
            return
        run.add_time("build_s", build_s)
        clock = time.perf_counter()
        with self.db.transaction() as session:
            job = session.get(Job, item.job_id)
            change_state(job, JobState.SENDING)
            job.model_id = self.predictor.package.config.package_id
            job.updated_at = utcnow()
            for destination in self.settings.destinations:
                key, kinds = str(destination), self.settings.outputs_for(destination)
                owed = (r for r in built if r.kind in kinds and r.destination in (None, key))
                for result in owed:
                    outbox.add(
                        session,
                        item.job_id,
                        key,
                        result.kind,
                        result.sop_uid,
                        result.relpath,
                    )
            for sop_uid, vector in run.embeddings:
                embeddings.add(session, job, sop_uid, job.model_id, vector)
            session.flush()
            # The commit's own time is not in the record it commits.
            run.add_time("database_s", time.perf_counter() - clock)
            summary = self._summary(run)
            job.result = summary.to_json()
            audit.record(
                session,
                Action.INFERENCE_COMPLETED,
                **item.ids,
                detail=InferenceCompleted(item.run, job.model_id, summary).to_json(),
            )

    def _summary(self, run: _Run) -> RunSummary:
        item = run.item
        return RunSummary(
            images=tuple(run.summary_images),
            unreadable=run.unreadable,
            text=item.text_source if self.reads_text else "none",
            reason=item.reason,
            batch_studies=run.batch_studies,
            timings=dict(run.timings),
        )

    def _requeue_or_fail(self, item: WorkItem, reason: str) -> None:
        with self.db.transaction() as session:
            job = session.get(Job, item.job_id)
            if job.attempts >= self.settings.max_job_attempts:
                reason = f"{reason}, {job.attempts} times"
                jobs.fail(session, job, reason)
                action, outcome = Action.JOB_FAILED, Outcome.FAILURE
            else:
                jobs.requeue(session, job)
                action, outcome = Action.JOB_REQUEUED, Outcome.WARNING
            audit.record(
                session,
                action,
                outcome,
                **item.ids,
                detail={"run": item.run, "reason": reason, "attempts": job.attempts},
            )
        log.warning("job %d: %s (%s)", item.job_id, reason, action)

    def _fail(self, item: WorkItem, reason: str) -> None:
        try:
            with self.db.transaction() as session:
                job = session.get(Job, item.job_id)
                jobs.fail(session, job, reason)
                audit.record(
                    session,
                    Action.JOB_FAILED,
                    Outcome.FAILURE,
                    **item.ids,
                    detail={"run": item.run, "reason": reason},
                )
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            # Not even the failure can be written: the run stays the worker's to record.
            self._defer_for_disk(item, exc)


def _describe(exc: BaseException) -> str:
    """An error in a few words, for the audit: the OS's text for an OSError."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"[:300]


def _image_summary(image: ImageResult) -> ImageSummary:
    """What the audit (``inference.completed``) keeps of one image's results."""
    return ImageSummary.of(
        str(image.source.SOPInstanceUID),
        {f.name: f.probability for f in image.findings},
        (f.name for f in image.findings if f.present),
    )


def _without_pixels(ds: Dataset) -> Dataset:
    """The source once decoded: the result writers read its header only (``reference_header``
    drops the pixels), so the worker need not hold a study's pixel data while it runs."""
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _sr_path(job: Job | None) -> str | None:
    """Results path of the SR a job produced, if it got as far as building one and its files
    were not purged since."""
    if job is None or job.results_purged_at is not None:
        return None
    return next((o.path for o in job.outbox if o.kind == "SR"), None)


def _builder_pool(processes: int) -> ProcessPoolExecutor:
    """Processes that build result objects.

    Spawned, not forked: a fork of a process running torch's thread pools can deadlock."""
    pool = ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=keep_identifiers_out_of_the_log,
    )
    # Spawn them all now rather than one by one as work arrives.
    for _ in range(processes):
        pool.submit(keep_identifiers_out_of_the_log)
    return pool
