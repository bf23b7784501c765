"""The figures an operator graphs and alerts on, in Prometheus' format, read from the database
at scrape time.

A node may run as several processes sharing one database (a ``receiver`` and its ``worker``
nodes), and each may restart at any time: so nothing is counted in memory as it happens. The
gauges are the database's state counts at the scrape; the counters and histograms are folded
from the audit log, read on from the last event the previous scrape saw
(``storage.monitoring``), so a scrape costs what happened since the previous one, and a
restarted process (or another one) folds the same log to the same totals.

=================================================  =============================================
gauge                                              meaning
=================================================  =============================================
``cxrnode_database_up``                            1 when the scrape could read the database
``cxrnode_studies{state}``                         studies by state
``cxrnode_jobs{state}``                            unfinished runs (queued, running, sending)
``cxrnode_queue_oldest_job_age_seconds``           how long the oldest queued run has waited
``cxrnode_results_pending{destination}``           result objects not yet confirmed
``cxrnode_results_oldest_pending_age_seconds``     the oldest of them, per destination
``cxrnode_model_info{node,model}``                 the model of each node's latest run
``cxrnode_node_info{node,role,ae_title}``          the process answering the scrape
=================================================  =============================================

Counters (``_total``): instances received, duplicate and refused (by DICOM status), refused
associations (by reason), runs completed (by model) and failed, studies done, results sent,
delivery failures and abandoned results (by destination), and every audit event by action and
outcome. Histograms: seconds per run stage (``stage="inference"``: the model's forward pass),
end to end (last image received to every result confirmed) and processing (run queued to every
result confirmed).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from node.config import Settings
from storage import monitoring
from storage.actions import Action
from storage.database import Database
from storage.monitoring import LabelledCount

log = logging.getLogger(__name__)

PREFIX = "cxrnode_"
# Seconds. A run's stages take milliseconds on a GPU to seconds on a CPU; end to end includes
# the stable age (10 s by default) and the pairing window (300 s by default).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
END_TO_END_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800, 3600)
PROCESSING_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
# Delivery attempts' and results' counters, per destination, by the event that moves them.
_PER_DESTINATION = {
    Action.RESULT_SENT: "results_sent",
    Action.RESULT_SEND_FAILED: "delivery_failures",
    Action.RESULT_ABANDONED: "results_abandoned",
}


class Histogram:
    """Observations in fixed buckets: what a Prometheus histogram exposes."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts by upper bound, ``+Inf`` last."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else _number(bound), total))
        return out


class NodeMetrics(Collector):
    """A Prometheus collector over the node's database (register it in a registry).

    Parameters
    ----------
    db:
        The node's database, only read.
    settings:
        The identity of the process answering (``node_name``, ``role``, ``ae_title``).
    clock:
        Seconds since the epoch, for the ages (a test's fixed clock).
    """

    def __init__(self, db: Database, settings: Settings, clock=time.time) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()  # scrapes run in the server's thread pool
        self._seq = 0  # the last audit event folded in
        self._events: dict[tuple[str, str], int] = defaultdict(int)
        self._labelled: dict[str, dict[tuple[str, ...], int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self._stages: dict[str, Histogram] = {}
        self._end_to_end = Histogram(END_TO_END_BUCKETS)
        self._processing = Histogram(PROCESSING_BUCKETS)
        self._node_models: dict[str, tuple[int, str]] = {}  # node -> (seq, model)

    def catch_up(self) -> None:
        """Fold the audit log up to now (a process's first fold reads all of it: about 0.2 s
        per thousand runs here), so that the first scrape only reads what came since."""
        with self._lock:
            try:
                with self.db.reading() as session:
                    self._fold(session)
            except Exception:
                log.exception("metrics: the database could not be read")

    def describe(self) -> Iterator[Metric]:
        # The names without reading the database (the registry asks when registering).
        return iter(())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                with self.db.reading() as session:
                    backlog = monitoring.backlog(session)
                    self._fold(session)
            except Exception:
                log.exception("metrics: the database could not be read")
                yield _gauge("database_up", "1 when the scrape could read the database", 0)
                return
            yield _gauge("database_up", "1 when the scrape could read the database", 1)
            yield from self._gauges(backlog)
            yield from self._counters()
            yield from self._histograms()

    # Reading on from the last event ------------------------------------------------------

    def _fold(self, session) -> None:
        """Add the events committed since the previous scrape to the counts: every read
        first, then the additions, so a read that fails leaves the counts as they were (and
        the next scrape reads the same events again)."""
        upto = monitoring.last_sealed(session)
        if upto <= self._seq:
            return
        after = self._seq
        actions = monitoring.action_counts(session, after, upto)
        labelled = monitoring.labelled_counts(session, after, upto)
        runs = monitoring.completed_runs(session, after, upto)
        latest = {(r.study_uid, r.run): r for r in runs if r.study_uid and r.run is not None}
        nodes = monitoring.run_nodes(session, latest)
        turnarounds = monitoring.turnarounds(session, monitoring.studies_done(session, after, upto))

        for key, n in actions.items():
            self._events[key] += n
        for counted in labelled:
            self._count(counted)
        for run in runs:
            self._labelled["runs_completed"][(run.model or "",)] += 1
            for stage, seconds in run.timings.items():
                name = stage.removesuffix("_s")
                if name not in self._stages:
                    self._stages[name] = Histogram(STAGE_BUCKETS)
                self._stages[name].observe(seconds)
        for key, node in nodes.items():
            run = latest[key]
            if run.model and run.seq > self._node_models.get(node, (0, ""))[0]:
                self._node_models[node] = (run.seq, run.model)
        for turnaround in turnarounds:
            if turnaround.end_to_end_s is not None:
                self._end_to_end.observe(turnaround.end_to_end_s)
            if turnaround.processing_s is not None:
                self._processing.observe(turnaround.processing_s)
        self._seq = upto

    def _count(self, counted: LabelledCount) -> None:
        labelled = self._labelled
        if counted.action == Action.INSTANCE_REFUSED:
            labelled["instances_refused"][(counted.status or "",)] += counted.events
        elif counted.action in monitoring.REFUSED_CONNECTIONS:
            reason = counted.action.partition(".")[2]
            labelled["associations_refused"][(reason,)] += counted.refusals
        elif counted.action in _PER_DESTINATION:
            key = (counted.destination or "",)
            labelled[_PER_DESTINATION[counted.action]][key] += counted.events

    # The families ------------------------------------------------------------------------

    def _gauges(self, backlog: monitoring.Backlog) -> Iterator[Metric]:
        now = datetime.fromtimestamp(self.clock(), UTC)
        studies = GaugeMetricFamily(PREFIX + "studies", "Studies by state", labels=["state"])
        for state, n in sorted(backlog.studies.items()):
            studies.add_metric([state], n)
        yield studies
        jobs = GaugeMetricFamily(
            PREFIX + "jobs", "Unfinished runs by state (queued: the queue depth)", labels=["state"]
        )
        for state, n in backlog.jobs.items():
            jobs.add_metric([state], n)
        yield jobs
        oldest = backlog.oldest_queued_at
        yield _gauge(
            "queue_oldest_job_age_seconds",
            "How long the oldest queued run has waited for a worker (0: none queued)",
            max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
        )
        pending = GaugeMetricFamily(
            PREFIX + "results_pending",
            "Result objects not yet confirmed by their destination",
            labels=["destination"],
        )
        ages = GaugeMetricFamily(
            PREFIX + "results_oldest_pending_age_seconds",
            "How long the oldest unconfirmed result object of a destination has waited",
            labels=["destination"],
        )
        for destination in self._destinations(backlog):
            pending.add_metric([destination], backlog.results_pending.get(destination, 0))
            since = backlog.oldest_pending_result_at.get(destination)
            age = max((now - since).total_seconds(), 0.0) if since else 0.0
            ages.add_metric([destination], age)
        yield pending
        yield ages
        models = GaugeMetricFamily(
            PREFIX + "model_info",
            "The model each node ran its latest run with (1)",
            labels=["node", "model"],
        )
        for node, (_, model) in sorted(self._node_models.items()):
            models.add_metric([node, model], 1)
        yield models
        settings = self.settings
        info = GaugeMetricFamily(
            PREFIX + "node_info",
            "The node process answering this scrape (1); it serves only once its model loaded",
            labels=["node", "role", "ae_title"],
        )
        info.add_metric([settings.effective_node_name, settings.role, settings.ae_title], 1)
        yield info

    def _destinations(self, backlog: monitoring.Backlog) -> list[str]:
        """The configured destinations (so each has a series from the start, at 0) and any
        other with results still owed (one removed from the settings since)."""
        configured = [str(d) for d in self.settings.destinations]
        return configured + sorted(set(backlog.results_pending) - set(configured))

    def _counters(self) -> Iterator[Metric]:
        def total(name: str, help_text: str, action: str) -> CounterMetricFamily:
            n = sum(v for (a, _), v in self._events.items() if a == action)
            return CounterMetricFamily(PREFIX + name, help_text, value=n)

        yield total("instances_received", "Instances received and stored", Action.INSTANCE_RECEIVED)
        yield total(
            "instances_duplicate",
            "Instances received again with the same content (acknowledged, not stored twice)",
            Action.INSTANCE_DUPLICATE,
        )
        yield self._labelled_counter(
            "instances_refused", "Instances refused, by the DICOM status returned", ["status"]
        )
        yield self._labelled_counter(
            "associations_refused",
            "Associations refused (unknown calling AE, over a cap, TLS, timeouts), by reason",
            ["reason"],
        )
        yield self._labelled_counter(
            "runs_completed", "Runs whose inference completed, by model", ["model"]
        )
        yield total("runs_failed", "Runs failed for good", Action.JOB_FAILED)
        yield total("studies_done", "Runs whose every result was confirmed", monitoring.DONE)
        configured = [(str(d),) for d in self.settings.destinations]
        for name, help_text in (
            ("results_sent", "Result objects confirmed by a destination"),
            ("delivery_failures", "Failed attempts to send a result object"),
            ("results_abandoned", "Result objects given up on (an admin must resend them)"),
        ):
            yield self._labelled_counter(name, help_text, ["destination"], configured)
        events = CounterMetricFamily(
            PREFIX + "audit_events",
            "Audit log rows by action and outcome",
            labels=["action", "outcome"],
        )
        for (action, outcome), n in sorted(self._events.items()):
            events.add_metric([action, outcome], n)
        yield events

    def _labelled_counter(
        self,
        name: str,
        help_text: str,
        labels: list[str],
        always: Iterable[tuple[str, ...]] = (),
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, help_text, labels=labels)
        counts = self._labelled[name]
        for key in sorted({*always, *counts}):
            family.add_metric(list(key), counts.get(key, 0))
        return family

    def _histograms(self) -> Iterator[Metric]:
        stages = HistogramMetricFamily(
            PREFIX + "run_stage_seconds",
            "Seconds a run spent in each stage (inference: the model's forward pass)",
            labels=["stage"],
        )
        for stage, histogram in sorted(self._stages.items()):
            stages.add_metric([stage], histogram.buckets(), histogram.sum)
        yield stages
        for name, help_text, histogram in (
            (
                "end_to_end_seconds",
                "Last image of a study received to every result confirmed",
                self._end_to_end,
            ),
            ("processing_seconds", "Run queued to every result confirmed", self._processing),
        ):
            family = HistogramMetricFamily(PREFIX + name, help_text)
            family.add_metric([], histogram.buckets(), histogram.sum)
            yield family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def _number(bound: float) -> str:
    """A bucket bound as Prometheus clients write it (``1.0``, ``0.25``)."""
    return repr(float(bound))
