"""What the admin reads: audit events, a study's timeline, statistics and the chain check as
terminal tables, CSV or JSON. Shared by ``cxrnode audit`` and the HTTP API's CSV export."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from storage.actions import Action, Subject
from storage.audit_chain import ChainReport
from storage.queries import Stats, StudySummary, StudyTimeline, iso_utc, to_json
from storage.run_summary import Finding, InferenceCompleted

if TYPE_CHECKING:
    from node.similar import SimilarStudies

EVENT_FIELDS = (
    "id",
    "time",
    "action",
    "outcome",
    "actor_ae",
    "actor_ip",
    "actor_user",
    "patient_id",
    "accession",
    "study_uid",
    "series_uid",
    "sop_uid",
    "detail",
)


def summarize(action: str, detail: dict[str, Any] | None) -> str:
    """One line saying what an event's detail means, in the admin's words.

    The line comes from the action's own writer in ``_LINES`` (or the one of its subject's
    family in ``_FAMILY_LINES``, ``hl7`` or ``admin``); an action without one, or a detail its
    writer cannot say more of, shows its reason, error or why, else every key.
    """
    d = detail or {}
    line = _LINES.get(action) or _FAMILY_LINES.get(action.partition(".")[0])
    said = line(d) if line else None
    if said is not None:
        return said
    for key in ("reason", "error", "why"):
        if d.get(key):
            return str(d[key])
    return _compact(d)


def findings_line(findings: Sequence[Finding]) -> str:
    """A run's findings in a few words: those present, else the two highest."""
    present = [f for f in findings if f.present]
    if present:
        return ", ".join(f"{f.name} {f.probability:.2f}" for f in present)
    top = ", ".join(f"{f.name} {f.probability:.2f}" for f in findings[:2])
    return f"no finding above threshold (top: {top})" if top else "no image result"


def _inference_line(d: dict[str, Any]) -> str:
    event = InferenceCompleted.from_json(d)
    return f"run {event.run}, {event.model}: " + findings_line(event.summary.findings)


def _similar_line(d: dict[str, Any]) -> str:
    if "returned" not in d:
        return f"similar cases, k={d.get('k')}: {d.get('reason')}"
    return f"similar cases, k={d.get('k')}, run {d.get('run')}: {len(d['returned'])} studies named"


def _queued_line(d: dict[str, Any]) -> str:
    text = d.get("text")
    return f"run {d.get('run')} ({d.get('reason', 'first')}" + (f", text: {text})" if text else ")")


def _sent_line(d: dict[str, Any]) -> str:
    return f"{d.get('kind', 'result')} to {d.get('destination', '?')}"


def _send_failed_line(d: dict[str, Any]) -> str:
    retry = d.get("retry_in_s")
    return f"{_sent_line(d)}: {d.get('error')}; attempt {d.get('attempt')}, " + (
        f"retry in {retry} s" if retry is not None else "given up"
    )


def _hl7_line(d: dict[str, Any]) -> str:
    parts = [d.get("message_type"), d.get("message_id"), f"ACK {d['ack']}" if "ack" in d else None]
    line = " ".join(p for p in parts if p)
    return f"{line}: {d['reason']}" if d.get("reason") else line


def _instance_line(d: dict[str, Any]) -> str | None:
    if "size" not in d:
        return None  # older events: said by their reason or keys
    line = f"{d['size']} bytes" + (f", {d['transfer_syntax']}" if d.get("transfer_syntax") else "")
    return line + (f"; {d['note']}" if d.get("note") else "")


def _node_started_line(d: dict[str, Any]) -> str:
    return (
        f"{d.get('ae_title')} port {d.get('port')}, role {d.get('role', 'all')}, "
        f"{d.get('resumed_jobs', 0)} job(s) resumed"
    )


def _admin_line(d: dict[str, Any]) -> str:
    filters = d.get("filters") or {}
    shown = ", ".join(f"{k}={v}" for k, v in filters.items())
    return f"{d.get('what', '')} {shown}".strip() + (f" ({d['rows']} rows)" if "rows" in d else "")


# Each action's line writer; None from a writer: the detail is said the generic way.
_LINES: dict[str, Callable[[dict[str, Any]], str | None]] = {
    Action.INFERENCE_COMPLETED: _inference_line,
    Action.STUDY_QUEUED: _queued_line,
    Action.RESULT_SENT: _sent_line,
    Action.RESULT_SEND_FAILED: _send_failed_line,
    Action.INSTANCE_RECEIVED: _instance_line,
    Action.INSTANCE_DUPLICATE: _instance_line,
    Action.STUDY_DONE: lambda d: f"run {d.get('run')}: every result confirmed",
    Action.PAIRING_WINDOW_EXPIRED: lambda d: f"no report in time: runs with {d.get('runs_with')}",
    Action.NODE_STARTED: _node_started_line,
    Action.ADMIN_SIMILAR: _similar_line,
}
# Families of actions sharing one writer, by their subject.
_FAMILY_LINES: dict[str, Callable[[dict[str, Any]], str | None]] = {
    Subject.HL7: _hl7_line,
    Subject.ADMIN: _admin_line,
}


def _compact(detail: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, dict | list) else v}"
        for k, v in detail.items()
    )


# Tables -------------------------------------------------------------------------------------


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], widths: dict[int, int] | None = None
) -> str:
    """A plain-text table, columns padded to their widest cell (cut at ``widths[i]``)."""
    widths = widths or {}
    cells = [[_cell(v, widths.get(i, 80)) for i, v in enumerate(row)] for row in rows]
    sizes = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, sizes, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, sizes, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(value: Any, width: int) -> str:
    if value is None:
        return "-"
    text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def events_table(events: Sequence[dict[str, Any]]) -> str:
    """Audit events (``storage.audit.as_dict``) as a table with a one-line summary each."""
    rows = [
        (
            e["time"].replace("T", " ")[:23],
            e["action"],
            e["outcome"],
            _actor(e),
            e["patient_id"],
            e["accession"],
            e["study_uid"],
            summarize(e["action"], e["detail"]),
        )
        for e in events
    ]
    headers = ("time", "action", "outcome", "actor", "patient", "accession", "study", "summary")
    body = table(headers, rows, widths={6: 28, 7: 90})
    return f"{body}\n({len(rows)} events)"


def _actor(event: dict[str, Any]) -> str | None:
    parts = [event.get("actor_user"), event.get("actor_ae"), event.get("actor_ip")]
    found = [p for p in parts if p]
    if not found:
        return None
    return found[0] if len(found) == 1 else f"{found[0]}@{found[-1]}"


# What a spreadsheet takes for the start of a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: a text starting like a formula (``=``,
    ``+``, ``-``, ``@``, tab, carriage return) gets a leading apostrophe; anything else is
    returned as it is. A received identifier (``=HYPERLINK(...)`` as a Patient ID) must not
    run when an admin opens the export."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def events_csv(events: Sequence[dict[str, Any]]) -> str:
    """Audit events as CSV, every field, the detail as JSON, each cell spreadsheet-safe (the
    one CSV export of ``cxrnode audit`` and the HTTP API)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EVENT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for event in events:
        row = {**event, "detail": json.dumps(event["detail"])}
        writer.writerow({key: spreadsheet_safe(value) for key, value in row.items()})
    return out.getvalue()


# A study ------------------------------------------------------------------------------------


def timeline_text(timeline: StudyTimeline) -> str:
    """A study's state, runs with findings, reports, then its events."""
    study = timeline.study
    lines = [
        f"Study     {study.study_uid}",
        f"Patient   {study.patient_id or '-'}    Accession {study.accession or '-'}",
        f"State     {study.state}    instances {study.instances} ({study.processable} model input)",
        f"Received  {iso_utc(study.first_received_at)} .. {iso_utc(study.last_received_at)}",
    ]
    if study.turnaround_s is not None:
        lines.append(f"Turnaround {study.turnaround_s:.1f} s (last instance to results confirmed)")
    for run in study.runs:
        lines.append("")
        lines.append(
            f"Run {run.run}: {run.state} ({run.reason}, text: {run.text_source}), "
            f"model {run.model_id or '-'}, worker {run.claimed_by or '-'}, "
            f"attempts {run.attempts}"
        )
        if run.error:
            lines.append(f"  error: {run.error}")
        if run.findings:
            present = ", ".join(f"{f.name} {f.probability:.2f}" for f in run.present) or "none"
            lines.append(f"  present: {present}")
            others = [f for f in run.findings if not f.present][:5]
            if others:
                lines.append(
                    "  highest others: "
                    + ", ".join(f"{f.name} {f.probability:.2f}" for f in others)
                )
        if run.results:
            lines.append(
                "  results: " + ", ".join(f"{n} {s}" for s, n in sorted(run.results.items()))
            )
    for report in study.reports:
        lines.append(
            f"Report {report.id}: {report.source} {report.message_type or report.kind} "
            f"status {report.status or '-'}, {report.state}, received {iso_utc(report.received_at)}"
        )
    lines.append("")
    lines.append(events_table([to_json(e) for e in timeline.events]))
    return "\n".join(lines)


def studies_table(studies: Sequence[StudySummary]) -> str:
    rows = []
    for s in studies:
        run = s.latest
        rows.append(
            (
                iso_utc(s.last_received_at).replace("T", " ")[:19],
                s.patient_id,
                s.accession,
                s.study_uid,
                s.state,
                run.model_id if run else None,
                ", ".join(f"{f.name} {f.probability:.2f}" for f in run.present) if run else None,
            )
        )
    headers = ("received", "patient", "accession", "study", "state", "model", "present")
    return table(headers, rows, widths={3: 28, 5: 40})


def similar_text(answer: SimilarStudies) -> str:
    """The studies nearest a study (``node.similar``), as a table with their findings."""
    study = answer.study
    head = (
        f"Study {study.study_uid} (accession {study.accession or '-'}), run {answer.run}, "
        f"model {answer.model_id}"
    )
    if not answer.cases:
        return f"{head}: no other study of this model has an embedding stored"
    rows = [
        (
            case.rank,
            f"{case.distance:.4f}",
            case.study.patient_id,
            case.study.accession,
            case.study.study_uid,
            case.run,
            iso_utc(case.processed_at).replace("T", " ")[:19],
            findings_line(case.findings),
        )
        for case in answer.cases
    ]
    headers = ("rank", "distance", "patient", "accession", "study", "run", "processed", "findings")
    body = table(headers, rows, widths={4: 28, 7: 60})
    return f"{head}: the {len(rows)} nearest (distance 1 - cosine)\n{body}"


# Statistics ---------------------------------------------------------------------------------


def stats_text(stats: Stats) -> str:
    rows = [
        (
            d.day,
            d.success,
            d.warning,
            d.failure,
            d.studies_received,
            d.studies_done,
            d.jobs_failed,
            d.sends_failed,
        )
        for d in stats.days
    ]
    headers = (
        "day",
        "success",
        "warning",
        "failure",
        "received",
        "done",
        "jobs failed",
        "sends failed",
    )
    lines = ["Events per outcome and studies per day (UTC):", table(headers, rows), ""]
    lines.append("Turnaround, seconds (studies done in the period):")
    lines.append(
        table(
            ("span", "n", "p50", "p90", "p95", "max"),
            [
                ("last instance received -> done", *_percentile_cells(stats.turnaround_s)),
                ("queued -> done", *_percentile_cells(stats.processing_s)),
            ],
        )
    )
    if stats.failures_by_action:
        lines += ["", "Failures by action:"]
        lines.append(table(("action", "count"), list(stats.failures_by_action.items())))
    return "\n".join(lines)


def _percentile_cells(p) -> list[Any]:
    return [p.count] + [None if v is None else f"{v:.1f}" for v in (p.p50, p.p90, p.p95, p.max)]


def stats_csv(stats: Stats) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "day",
            "success",
            "warning",
            "failure",
            "studies_received",
            "studies_done",
            "jobs_failed",
            "sends_failed",
        ]
    )
    for d in stats.days:
        writer.writerow(
            [
                d.day,
                d.success,
                d.warning,
                d.failure,
                d.studies_received,
                d.studies_done,
                d.jobs_failed,
                d.sends_failed,
            ]
        )
    return out.getvalue()


# The chain ----------------------------------------------------------------------------------


def verify_text(report: ChainReport) -> str:
    head = f"head seq {report.head_seq}, hash {report.head_hash}"
    if report.ok:
        return f"audit chain intact: {report.checked} events checked, {head}"
    lines = [f"AUDIT CHAIN BROKEN: {len(report.problems)} problem(s) in {report.checked} events"]
    first = report.first
    lines.append(f"first broken row: event id {first.event_id} ({first.kind}): {first.message}")
    for problem in report.problems[1:]:
        lines.append(f"  then event id {problem.event_id} ({problem.kind}): {problem.message}")
    if report.truncated:
        lines.append("  (more problems not listed)")
    lines.append(head)
    return "\n".join(lines)
