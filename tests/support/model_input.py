"""Every real report in the shared data as the feeds store it, and digests of model input.

The reports go in through the real feeds into a real SQLite file: each HL7 message (WashU RIS
logs, dcm4che and FHIR-Converter samples) parsed and stored by the HL7 feed's own sink
(``store_in_reports``, all in one transaction rather than one per ACK), and the IU X-ray
reports as one site export in the CSV drop folder (the uid stands in for accession and
patient: artificial keys, real text). What the tests compare is read back from the rows.

``model_input_digests.txt`` beside this module holds, per stored report, the first 16 hex
digits of the sha256 of the model input the node computed before the feed's sections were
reused (commit 282f621: ``TextCleaning()(row.text)``, the bundled cleaning, on the text alone).
It was written once by :func:`write_digests` run against that commit's code; rewriting it
with later code would make the comparison prove nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from node.feeds.csvfeed import CsvFeed
from node.feeds.errors import HL7ParseError, HL7Unusable
from node.feeds.hl7feed import store_in_reports
from node.feeds.hl7message import parse_message
from storage.database import Database
from storage.reports import ReportFieldTooLong
from storage.schema import Report

DIGESTS = Path(__file__).with_name("model_input_digests.txt")
PEER = ("127.0.0.1", 2575)


def ris_log_messages(data: bytes) -> list[bytes]:
    """The messages of a WashU RIS log: ``<SB>`` ... ``<EB>`` blocks whose segments end in a
    literal ``<R>`` and a line break; timestamp lines and blank lines between blocks."""
    messages = []
    for block in re.findall(rb"<SB>(.*?)<EB>", data, re.S):
        segments = re.split(rb"<R>\r?\n?", block.strip(b"\r\n"))
        messages.append(b"\r".join(s.strip(b"\r\n") for s in segments if s.strip(b"\r\n")))
    return messages


def hl7_messages(shared_data: Path) -> list[bytes]:
    """Every HL7 message of the shared data, the WashU logs' in file order first."""
    root = shared_data / "hl7-washu-scout-ris-logs"
    messages = [
        m for log in sorted(root.rglob("*.log")) for m in ris_log_messages(log.read_bytes())
    ]
    for folder in ("hl7-dcm4che-testdata", "hl7-fhir-converter-samples"):
        messages += [p.read_bytes() for p in sorted((shared_data / folder).glob("*.hl7"))]
    return messages


def iu_export(shared_data: Path) -> str:
    """The IU X-ray reports as a site's CSV export: one row per report, its section columns."""
    path = shared_data / "iu-xray-openi-reports" / "indiana_reports.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = io.StringIO()
    writer = csv.writer(out)
    columns = ["indication", "comparison", "findings", "impression"]
    writer.writerow(["accession", "patient_id", *columns])
    for row in rows:
        writer.writerow([f"IU{row['uid']}", f"IUP{row['uid']}", *(row[c] for c in columns)])
    return out.getvalue()


def store_all(shared_data: Path, db: Database, drop: Path) -> dict[str, Report]:
    """Feed every real report into ``db``; return the stored rows by key (``hl7:<MSH-10>``,
    ``csv:<accession>``), detached from their session."""
    with db.transaction() as session:  # one transaction: the feed's sink, without an ACK each
        for message in hl7_messages(shared_data):
            try:
                store_in_reports(session, parse_message(message), PEER)
            except (HL7ParseError, HL7Unusable, ReportFieldTooLong):
                continue  # answered AR or AE by the feed: nothing stored
    drop.mkdir(parents=True, exist_ok=True)
    (drop / "iu.csv").write_text(iu_export(shared_data), "utf-8")
    csv_feed = CsvFeed(drop, db)
    csv_feed.poll()
    csv_feed.poll()  # the second poll sees the file unchanged and reads it
    with db.transaction() as session:
        rows = session.scalars(select(Report).order_by(Report.id)).all()
        session.expunge_all()
    return {_key(row): row for row in rows}


def digest(model_input: str | None) -> str:
    """The first 16 hex digits of the sha256 of a model input (``None`` as the empty input)."""
    return hashlib.sha256(("\x00" if model_input is None else model_input).encode()).hexdigest()[
        :16
    ]


def read_digests() -> dict[str, str]:
    lines = DIGESTS.read_text("utf-8").splitlines()
    return dict(line.split("\t") for line in lines if line and not line.startswith("#"))


def write_digests(
    shared_data: Path, workdir: Path, model_input: Callable[[Report], str | None]
) -> None:
    """Write :data:`DIGESTS` from the code this runs against (see the module docstring)."""
    db = Database(f"sqlite:///{workdir / 'db.sqlite'}")
    db.create_schema()
    rows = store_all(shared_data, db, workdir / "drop")
    db.dispose()
    header = "# sha256[:16] of TextCleaning()(row.text) per stored report, at commit 282f621\n"
    body = "".join(f"{key}\t{digest(model_input(row))}\n" for key, row in sorted(rows.items()))
    DIGESTS.write_text(header + body, "utf-8")


def _key(row: Report) -> str:
    return f"hl7:{row.message_id}" if row.source == "hl7" else f"csv:{row.accession}"


if __name__ == "__main__":  # python -m tests.support.model_input SHARED_DATA WORKDIR
    from models.text import TextCleaning

    write_digests(Path(sys.argv[1]), Path(sys.argv[2]), lambda row: TextCleaning()(row.text))
