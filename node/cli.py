"""``cxrnode``: the node's one console command."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from node.config import describe, load_settings
from node.errors import CxrNodeError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        logging.basicConfig(
            level=getattr(logging, settings.log_level.upper(), logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # APScheduler logs every tick at INFO; pynetdicom every association.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        return args.run(args, settings)
    except CxrNodeError as exc:
        print(f"cxrnode: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrnode", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (or CXRNODE_CONFIG)")
    commands = parser.add_subparsers(required=True, metavar="command")

    serve = commands.add_parser("serve", help="run the node until SIGTERM")
    serve.set_defaults(run=_serve)

    config = commands.add_parser("config", help="print the effective settings as JSON")
    config.set_defaults(run=_config)

    audit = commands.add_parser("audit", help="list audit events, filtered")
    audit.add_argument("--study", help="Study Instance UID")
    audit.add_argument("--accession")
    audit.add_argument("--patient", help="Patient ID")
    audit.add_argument("--action", help='exact action, or a prefix ending in "." (e.g. "result.")')
    audit.add_argument("--outcome", choices=["success", "warning", "failure"])
    audit.add_argument("--since", type=_utc_time, help="ISO time (UTC unless an offset is given)")
    audit.add_argument("--until", type=_utc_time, help="ISO time, exclusive")
    audit.add_argument("--limit", type=int, default=1000, help="newest N events (default 1000)")
    audit.add_argument("--format", choices=["table", "json", "csv"], default="table")
    audit.set_defaults(run=_audit)

    demo = commands.add_parser(
        "demo", help="start a private Orthanc and the node, send a synthetic study, show results"
    )
    demo.add_argument("--workdir", type=Path, help="keep Orthanc/node files here")
    demo.set_defaults(run=_demo)
    return parser


def _serve(args, settings) -> int:
    from node.service import Node  # torch is imported only by commands that need it

    Node(settings).run_until_signalled()
    return 0


def _config(args, settings) -> int:
    print(json.dumps(describe(settings), indent=2))
    return 0


def _audit(args, settings) -> int:
    from storage import audit
    from storage.database import Database

    where = audit.AuditFilter(
        study_uid=args.study,
        accession=args.accession,
        patient_id=args.patient,
        action=args.action,
        outcome=args.outcome,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    db = Database(settings.database_url)
    db.create_schema()
    with db.transaction() as session:
        rows = [audit.as_dict(e) for e in audit.query(session, where)]
    _print_events(rows, args.format)
    return 0


def _demo(args, settings) -> int:
    from node.demo import run_demo

    return run_demo(args.workdir)


_TABLE_COLUMNS = ("time", "action", "outcome", "actor_ae", "accession", "study_uid", "detail")


def _print_events(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "detail": json.dumps(row["detail"])})
        return
    table = [
        [_cell(row[c], 64 if c != "study_uid" else 28) for c in _TABLE_COLUMNS] for row in rows
    ]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(_TABLE_COLUMNS)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(_TABLE_COLUMNS, widths, strict=True)))
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"({len(table)} events)")


def _cell(value, width: int) -> str:
    if value is None:
        return "-"
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _utc_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r}") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


if __name__ == "__main__":
    sys.exit(main())
