"""``cxrnode audit``: list (the default), show, stats and verify.

``cxrnode audit [filters]`` is ``cxrnode audit list [filters]``, as it always was.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from node.admin import render
from node.admin.timespec import parse_time
from storage.actions import Action

_OUTCOMES = ("success", "warning", "failure")


def add_audit_command(commands: argparse._SubParsersAction) -> None:
    """Add ``audit`` and its subcommands to the ``cxrnode`` parser."""
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--study", help="Study Instance UID")
    filters.add_argument("--accession")
    filters.add_argument("--patient", help="Patient ID")
    filters.add_argument(
        "--action", help='exact action, or a prefix ending in "." (e.g. "result.")'
    )
    filters.add_argument("--outcome", choices=_OUTCOMES)
    filters.add_argument(
        "--model", help="model package id, or its name or name@version (inference events)"
    )
    filters.add_argument(
        "--since", type=_time, help="ISO time (UTC unless an offset), today, 24h, 7d"
    )
    filters.add_argument("--until", type=_time, help="as --since, exclusive")
    filters.add_argument("--limit", type=int, default=1000, help="newest N events (0: all)")
    filters.add_argument("--format", choices=["table", "json", "csv"], default="table")

    audit = commands.add_parser(
        "audit",
        parents=[filters],
        help="query the audit log: list (default), show, stats, verify",
        description="Without a subcommand: list events, filtered (as 'audit list').",
    )
    audit.set_defaults(run=run_list)
    sub = audit.add_subparsers(metavar="subcommand", dest="audit_command")

    listing = sub.add_parser("list", parents=[filters], help="list events, filtered")
    listing.set_defaults(run=run_list)

    show = sub.add_parser("show", help="a study's whole timeline: state, runs, findings, events")
    show.add_argument("study", help="Study Instance UID or accession number")
    show.add_argument("--format", choices=["table", "json", "csv"], default="table")
    show.set_defaults(run=run_show)

    stats = sub.add_parser("stats", help="events per outcome per day, turnaround percentiles")
    stats.add_argument("--since", type=_time, default="7d", help="default: 7d (seven days ago)")
    stats.add_argument("--until", type=_time)
    stats.add_argument("--format", choices=["table", "json", "csv"], default="table")
    stats.set_defaults(run=run_stats)

    verify = sub.add_parser("verify", help="check the audit hash chain; exit 1 if broken")
    verify.add_argument(
        "--anchor", type=_anchor, help="SEQ:HASH of a head recorded earlier, to check it is kept"
    )
    verify.add_argument("--format", choices=["table", "json"], default="table")
    verify.set_defaults(run=run_verify)


def run_list(args, settings) -> int:
    from storage import audit

    where = audit.AuditFilter(
        study_uid=args.study,
        accession=args.accession,
        patient_id=args.patient,
        action=args.action,
        outcome=args.outcome,
        model=args.model,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    db = open_database(settings)
    with db.reading() as session:
        rows = [audit.as_dict(e) for e in audit.query(session, where)]
    _audit_access(db, "audit list", where.describe(), len(rows))
    _print_events(rows, args.format)
    return 0


def run_show(args, settings) -> int:
    from storage.queries import study_timeline, to_json

    db = open_database(settings)
    with db.reading() as session:
        timeline = study_timeline(session, args.study)
        data = to_json(timeline) if timeline else None
        text = render.timeline_text(timeline) if timeline and args.format == "table" else None
    _audit_access(db, "audit show", {"study": args.study}, int(timeline is not None))
    if timeline is None:
        print(f"cxrnode: no study with UID or accession {args.study!r}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(data, indent=2))
    elif args.format == "csv":
        sys.stdout.write(render.events_csv(data["events"]))
    else:
        print(text)
    return 0


def run_stats(args, settings) -> int:
    from storage.queries import stats, to_json

    db = open_database(settings)
    with db.reading() as session:
        result = stats(session, args.since, args.until)
    if args.format == "json":
        print(json.dumps(to_json(result), indent=2))
    elif args.format == "csv":
        sys.stdout.write(render.stats_csv(result))
    else:
        print(render.stats_text(result))
    return 0


def run_verify(args, settings) -> int:
    from storage import audit
    from storage.audit_chain import verify

    db = open_database(settings)
    journal = db.recorded_head()  # read before the walk: it can only be behind the database
    with db.reading() as session:
        report = verify(session, anchor=args.anchor, journal=journal)
    # Recorded after the walk (its own seal is not part of what was checked).
    with db.transaction() as session:
        audit.record(
            session,
            Action.ADMIN_VERIFY,
            audit.Outcome.SUCCESS if report.ok else audit.Outcome.FAILURE,
            actor_user=cli_user(),
            detail={
                "checked": report.checked,
                "head_seq": report.head_seq,
                "first_problem": report.first.as_dict() if report.first else None,
            },
        )
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render.verify_text(report))
    return 0 if report.ok else 1


def open_database(settings):
    from storage.database import Database

    db = Database(settings.database_url, node_name=settings.effective_node_name)
    db.create_schema()
    return db


def _audit_access(db, what: str, filters: dict[str, Any], rows: int) -> None:
    """Reading patient data is itself an audit event (who, what they asked, how much); the
    answer is shown only once the event is committed."""
    from storage import audit

    with db.transaction() as session:
        audit.record(
            session,
            Action.ADMIN_QUERY,
            actor_user=cli_user(),
            detail={"what": what, "filters": filters, "rows": rows, "via": "cli"},
        )


def cli_user() -> str:
    """Who runs the command, as the audit log names them (``actor_user``)."""
    try:
        return getpass.getuser()[:64]
    except (KeyError, OSError):  # no passwd entry and no LOGNAME (containers)
        return f"uid:{os.getuid()}"


def _print_events(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        sys.stdout.write(render.events_csv(rows))
    else:
        print(render.events_table(rows))


def _time(text: str):
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _anchor(text: str) -> tuple[int, str]:
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError("anchor must be SEQ:HASH (a number and 64 hex digits)")
    return int(seq), digest.lower()
