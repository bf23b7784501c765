"""The CSV drop folder with real files on disk, a real SQLite file, and the IU X-ray reports."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy import text as sql_text

from node.feeds.csvfeed import CsvFeed
from storage.schema import Report

GOOD = (
    "accession,patient_id,report,study_uid,status,time\n"
    "A1,P1,Lungs clear. No effusion.,1.2.826.0.1.3680043.8.498.1,F,2024-03-01T09:30:00Z\n"
    'A2,P2,"FINDINGS: Cardiomegaly.\nIMPRESSION: Enlarged heart.",,Prelim,20240302101500\n'
)


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


@pytest.fixture
def feed(drop: Path, db) -> CsvFeed:
    return CsvFeed(drop, db)


def settle(feed: CsvFeed):
    """Two polls: the first sees the files, the second (sizes unchanged) processes them."""
    assert feed.poll() == []
    return feed.poll()


def reports(db) -> list[Report]:
    with db.transaction() as session:
        return list(session.scalars(select(Report).order_by(Report.id)))


def actions(audited) -> list[str]:
    return [e["action"] for e in audited()]


def test_good_file_is_stored_and_moved_to_done(drop, feed, db, audited):
    (drop / "reports.csv").write_text(GOOD, "utf-8")
    [result] = settle(feed)

    assert (result.outcome, result.stored, result.rejected_rows) == ("done", 2, [])
    assert (drop / "done" / "reports.csv").exists() and not (drop / "reports.csv").exists()
    first, second = reports(db)
    assert (first.accession, first.patient_id, first.status, first.source) == (
        "A1",
        "P1",
        "F",
        "csv",
    )
    assert first.study_uid == "1.2.826.0.1.3680043.8.498.1"
    assert first.observed_at.isoformat() == "2024-03-01T09:30:00"
    assert first.message_id.endswith(":2") and second.message_id.endswith(":3")
    assert second.text == "FINDINGS: Cardiomegaly.\nIMPRESSION: Enlarged heart."
    assert second.sections == {"FINDINGS": "Cardiomegaly.", "IMPRESSION": "Enlarged heart."}
    assert (second.status, second.sender, second.state) == ("P", "reports.csv", "waiting")
    assert actions(audited) == ["csv.received", "csv.received", "csv.file_done"]


def test_on_stored_is_called_once_per_file_with_new_rows(drop, db):
    calls = []
    feed = CsvFeed(drop, db, on_stored=lambda: calls.append(len(reports(db))))
    (drop / "reports.csv").write_text(GOOD, "utf-8")
    settle(feed)
    (drop / "reports.csv").write_text(GOOD, "utf-8")  # duplicates only: no call
    settle(feed)
    assert calls == [2]


def test_a_file_still_growing_is_left_alone(drop, feed, db):
    path = drop / "growing.csv"
    path.write_text(GOOD.splitlines()[0] + "\n", "utf-8")
    assert feed.poll() == []
    with path.open("a", encoding="utf-8") as handle:
        handle.write(GOOD.split("\n", 1)[1])
    assert feed.poll() == []  # changed since the last poll
    [result] = feed.poll()
    assert result.stored == 2


def test_a_bad_row_is_rejected_alone_and_audited(drop, feed, db, audited):
    text = (
        GOOD + ",P3,no accession\nA4,P4,\nA5,P5,ok,not-a-uid\nA6,P6,fine,,F,yesterday\nA7,P7,good\n"
    )
    (drop / "mixed.csv").write_text(text, "utf-8")
    [result] = settle(feed)

    assert result.outcome == "done" and result.stored == 3
    # Line numbers are where a record starts in the file (A2's report spans lines 3-4).
    assert [line for line, _ in result.rejected_rows] == [5, 6, 7, 8]
    assert [r.accession for r in reports(db)] == ["A1", "A2", "A7"]
    rejected = [e for e in audited() if e["action"] == "csv.row_rejected"]
    assert [(e["detail"]["line"], e["accession"]) for e in rejected] == [
        (5, None),
        (6, "A4"),
        (7, "A5"),
        (8, "A6"),
    ]
    assert "accession" in rejected[0]["detail"]["reason"]
    assert "report text" in rejected[1]["detail"]["reason"]
    assert "UID" in rejected[2]["detail"]["reason"]
    assert "time" in rejected[3]["detail"]["reason"]


def test_binary_file_is_rejected_with_a_reason(drop, feed, db, shared_data, audited):
    png = shared_data / "nih-chestxray14-samples" / "00000001_000.png"
    shutil.copy(png, drop / "scan.csv")  # a misnamed image
    [result] = settle(feed)

    assert result.outcome == "rejected" and "binary" in result.reason
    assert (drop / "rejected" / "scan.csv").exists()
    reason = (drop / "rejected" / "scan.csv.reason.txt").read_text("utf-8")
    assert "binary" in reason
    assert reports(db) == [] and actions(audited) == ["csv.file_rejected"]


def test_same_file_dropped_twice_gives_no_duplicate_rows(drop, feed, db, audited):
    (drop / "reports.csv").write_text(GOOD, "utf-8")
    settle(feed)
    (drop / "reports.csv").write_text(GOOD, "utf-8")
    [again] = settle(feed)

    assert (again.outcome, again.stored, again.duplicates) == ("done", 0, 2)
    assert len(reports(db)) == 2
    assert len(list((drop / "done").glob("reports*.csv"))) == 2  # both kept, second renamed
    assert actions(audited).count("csv.duplicate") == 2


def test_file_reprocessed_after_a_crash_before_the_move_yields_duplicates(drop, db, monkeypatch):
    (drop / "reports.csv").write_text(GOOD, "utf-8")
    crashing = CsvFeed(drop, db)
    monkeypatch.setattr(crashing, "_move", lambda *a, **k: (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        settle(crashing)  # rows committed, then the process died before moving the file
    assert len(reports(db)) == 2 and (drop / "reports.csv").exists()

    [result] = settle(CsvFeed(drop, db))  # the node restarted
    assert (result.stored, result.duplicates) == (0, 2)
    assert len(reports(db)) == 2 and (drop / "done" / "reports.csv").exists()


def test_latin_1_excel_export_with_semicolons_and_aliases(drop, feed, db):
    text = (
        "AccessionNumber;PatientID;Findings;Impression;Report Status\r\n"
        "X-1;PAT 9;Ejection fraction ±60% ÷ 2;Normal;Final\r\n"
    )
    (drop / "export.csv").write_bytes(text.encode("latin-1"))
    [result] = settle(feed)

    assert result.stored == 1
    [report] = reports(db)
    assert report.sections == {"FINDINGS": "Ejection fraction ±60% ÷ 2", "IMPRESSION": "Normal"}
    assert report.text == "FINDINGS:\nEjection fraction ±60% ÷ 2\n\nIMPRESSION:\nNormal"
    assert report.status == "F"


def test_utf_8_with_bom_is_read(drop, feed, db):
    (drop / "bom.csv").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    [result] = settle(feed)
    assert result.stored == 2 and reports(db)[0].accession == "A1"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("uid,findings,impression\n1,Clear,Normal\n", "accession, patient_id"),
        ("accession,patient_id,report,Accession Number\nA,P,x,B\n", "both mean accession"),
        ("accession,patient_id,report\n", "no data rows"),
        ("", "empty file"),
    ],
)
def test_file_without_a_usable_header_is_rejected(drop, feed, content, reason):
    (drop / "bad.csv").write_text(content, "utf-8")
    [result] = settle(feed)
    assert result.outcome == "rejected" and reason in result.reason
    assert reason in (drop / "rejected" / "bad.csv.reason.txt").read_text("utf-8")


def test_file_whose_rows_are_all_bad_goes_to_rejected(drop, feed, db):
    (drop / "allbad.csv").write_text("accession,patient_id,report\nA1,,text\n,P2,text\n", "utf-8")
    [result] = settle(feed)
    assert result.outcome == "rejected" and "all 2 rows rejected" in result.reason
    assert (drop / "rejected" / "allbad.csv").exists() and reports(db) == []


def test_iu_xray_reports_as_a_site_export(drop, feed, db, shared_data):
    # The IU collection has no accession or patient: a site export adds them. The uid stands
    # in for both here; the pairing this allows is artificial.
    source = shared_data / "iu-xray-openi-reports" / "indiana_reports.csv"
    with source.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:200]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["accession", "patient_id", "indication", "findings", "impression"])
    for row in rows:
        writer.writerow(
            [
                f"IU{row['uid']}",
                f"IUP{row['uid']}",
                row["indication"],
                row["findings"],
                row["impression"],
            ]
        )
    (drop / "iu.csv").write_text(out.getvalue(), "utf-8")
    [result] = settle(feed)

    without_text = [r for r in rows if not (r["findings"].strip() or r["impression"].strip())]
    assert result.stored == len(rows) - len(without_text)
    assert len(result.rejected_rows) == len(without_text)
    first = reports(db)[0]
    assert first.sections["IMPRESSION"] == rows[0]["impression"]
    assert first.sections["INDICATION"] == rows[0]["indication"]


def test_hl7_escapes_a_ris_export_kept_are_decoded_once_at_the_feed(drop, feed, db, shared_data):
    # IU report 2324's indication reads "asthma \T\ XXXX": HL7's escaped "&", left in by the
    # RIS the collection was exported from. The stored text is what a reader sees.
    source = shared_data / "iu-xray-openi-reports" / "indiana_reports.csv"
    with source.open(encoding="utf-8", newline="") as handle:
        [row] = [r for r in csv.DictReader(handle) if r["uid"] == "2324"]
    assert row["indication"] == "pt states hx of asthma \\T\\ XXXX"
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["accession", "patient_id", "indication", "findings", "impression"])
    writer.writerow(["IU2324", "IUP2324", row["indication"], row["findings"], row["impression"]])
    writer.writerow(["A2", "P2", r"path C:\temp\ and 5 \ 2", "Clear.", ""])
    (drop / "iu.csv").write_text(out.getvalue(), "utf-8")
    [result] = settle(feed)

    assert result.stored == 2
    first, second = reports(db)
    assert first.sections["INDICATION"] == "pt states hx of asthma & XXXX"
    assert "INDICATION:\npt states hx of asthma & XXXX\n" in first.text
    assert second.sections["INDICATION"] == r"path C:\temp\ and 5 \ 2"  # no escape: as written


def test_the_real_iu_file_is_rejected_for_its_missing_key_columns(drop, feed, shared_data):
    shutil.copy(shared_data / "iu-xray-openi-reports" / "indiana_reports.csv", drop)
    [result] = settle(feed)
    assert result.outcome == "rejected"
    assert "accession, patient_id" in result.reason


# The drop folder is shared with whoever drops files: links, odd entries and broken
# subfolders. ------------------------------------------------------------------------------

SECRET = "SECRET-ROW,P-SECRET,the first line of a file the node can read\n"


def everything_said(drop: Path, audited, caplog) -> str:
    """What the node wrote anywhere an admin or a sender may read."""
    reasons = "".join(p.read_text("utf-8") for p in drop.rglob("*.reason.txt"))
    return reasons + json.dumps(audited()) + caplog.text


def test_a_symlinked_csv_is_refused_unread_and_its_target_never_quoted(
    drop, feed, db, audited, caplog, tmp_path
):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET, "utf-8")
    (drop / "leak.csv").symlink_to(secret)
    [result] = feed.poll()  # refused at once: a link is never read, stable or not

    assert result.outcome == "rejected"
    assert result.reason == "a symbolic link, not a plain regular file: not read"
    assert (drop / "rejected" / "leak.csv").is_symlink()  # the link moved, not its target
    assert secret.read_text("utf-8") == SECRET
    assert "SECRET" not in everything_said(drop, audited, caplog)
    assert [e["action"] for e in audited()] == ["csv.file_rejected"]
    assert reports(db) == [] and settle(feed) == []


def test_a_symlinked_report_file_elsewhere_is_not_ingested(drop, feed, db, tmp_path):
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text(GOOD, "utf-8")
    (drop / "reports.csv").symlink_to(elsewhere)
    [result] = feed.poll()
    assert result.outcome == "rejected" and feed.poll() == [] and feed.poll() == []
    assert reports(db) == [] and elsewhere.read_text("utf-8") == GOOD


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_other_entries_named_csv_are_moved_to_rejected_unread(drop, feed, db, kind):
    entry = drop / "odd.csv"
    entry.mkdir() if kind == "directory" else os.mkfifo(entry)  # a FIFO would block a read
    [result] = feed.poll()
    expected = "a directory" if kind == "directory" else "a special file"
    assert result.reason == f"{expected}, not a plain regular file: not read"
    assert not os.path.lexists(entry) and os.path.lexists(drop / "rejected" / "odd.csv")


def test_a_hard_link_to_a_file_elsewhere_is_refused_unread(
    drop, feed, db, audited, caplog, tmp_path
):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET, "utf-8")
    os.link(secret, drop / "linked.csv")
    [result] = feed.poll()
    assert result.reason == "a file with 2 hard links, not a plain regular file: not read"
    assert "SECRET" not in everything_said(drop, audited, caplog) and reports(db) == []
    assert secret.read_text("utf-8") == SECRET


def test_rejected_replaced_by_a_link_is_never_written_through(drop, feed, db, audited, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (drop / "rejected").symlink_to(outside)
    (drop / "bad.csv").write_text("no,header\n1,2\n", "utf-8")
    (drop / "reports.csv").write_text(GOOD, "utf-8")
    for _ in range(3):
        assert feed.poll() == []

    assert list(outside.iterdir()) == []
    assert (drop / "bad.csv").exists() and reports(db) == []  # nothing committed, all waits
    (unusable,) = audited()  # once, not at every poll
    assert unusable["action"] == "csv.folder_unusable"
    assert "rejected/ is a symbolic link, not a directory" in unusable["detail"]["reason"]

    (drop / "rejected").unlink()  # the admin repairs it: the files go through
    results = settle(feed)
    assert sorted(r.outcome for r in results) == ["done", "rejected"]
    assert (drop / "rejected" / "bad.csv").exists() and len(reports(db)) == 2


def test_a_plain_file_named_done_fails_no_poll_and_holds_every_file_back(drop, feed, db, audited):
    (drop / "done").write_text("not a folder", "utf-8")
    (drop / "first.csv").write_text(GOOD, "utf-8")
    (drop / "second.csv").write_text(GOOD.replace("A1", "B1").replace("A2", "B2"), "utf-8")
    assert settle(feed) == []
    assert reports(db) == []  # no row committed that could not be moved after
    assert [e["action"] for e in audited()] == ["csv.folder_unusable"]
    assert "done/ is a regular file" in audited()[0]["detail"]["reason"]

    (drop / "done").unlink()
    assert [r.outcome for r in settle(feed)] == ["done", "done"]
    assert len(reports(db)) == 4


def test_a_link_planted_as_the_reason_file_is_not_written_through(drop, feed, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n", "utf-8")
    (drop / "rejected").mkdir()
    (drop / "rejected" / "bad.csv.reason.txt").symlink_to(victim)
    (drop / "bad.csv").write_text("", "utf-8")
    [result] = settle(feed)
    assert result.outcome == "rejected" and result.name != "bad.csv"  # under a free name
    assert victim.read_text("utf-8") == "untouched\n"
    assert (drop / "rejected" / f"{result.name}.reason.txt").read_text("utf-8") == "empty file\n"


def test_a_file_over_the_size_limit_is_rejected_before_it_is_read(drop, feed, audited):
    huge = drop / "huge.csv"
    with huge.open("wb") as handle:
        handle.truncate(1 << 30)  # 1 GiB, sparse: reading it would cost a GiB of memory
    [result] = settle(feed)
    assert result.outcome == "rejected"
    assert result.reason == f"{1 << 30} bytes, over the {64 << 20} limit: not read"
    (rejected,) = audited()
    assert rejected["detail"]["sha256"] is None  # never hashed: never read
    assert (drop / "rejected" / "huge.csv").stat().st_size == 1 << 30


def test_a_headerless_file_keeps_its_first_row_out_of_the_application_log(
    drop, feed, audited, caplog
):
    (drop / "rows.csv").write_text("ACC-77,PAT-77,Right lower lobe opacity\n", "utf-8")
    with caplog.at_level(logging.DEBUG):
        [result] = settle(feed)
    assert result.outcome == "rejected"
    assert "PAT-77" not in caplog.text and "opacity" not in caplog.text
    assert "rows.csv" in caplog.text and "header has no column" in caplog.text
    # The audit log and the reason file, beside the file itself, still show what was read.
    assert "PAT-77" in audited()[0]["detail"]["reason"]
    assert "PAT-77" in (drop / "rejected" / "rows.csv.reason.txt").read_text("utf-8")


def test_rows_rejected_for_their_values_are_not_quoted_in_the_application_log(drop, feed, caplog):
    text = "accession,patient_id,report,study_uid\nA1,P1,text,not-a-uid-SECRET\n"
    (drop / "allbad.csv").write_text(text, "utf-8")
    with caplog.at_level(logging.DEBUG):
        [result] = settle(feed)
    assert result.outcome == "rejected" and "SECRET" in result.reason
    assert "SECRET" not in caplog.text and "allbad.csv" in caplog.text


def test_a_file_the_file_system_refuses_to_move_fails_alone_and_is_audited_once(
    drop, db, audited, monkeypatch
):
    # As root (the test machine) no permission stops a rename: the refusal is simulated.
    feed = CsvFeed(drop, db)
    move = feed._move

    def refusing(path, target_dir, reason=None):
        if path.name == "first.csv":
            raise PermissionError(13, "Permission denied")
        return move(path, target_dir, reason)

    monkeypatch.setattr(feed, "_move", refusing)
    (drop / "first.csv").write_text(GOOD, "utf-8")
    (drop / "second.csv").write_text(GOOD.replace("A1", "B1").replace("A2", "B2"), "utf-8")
    results = settle(feed)
    assert [(r.name, r.outcome) for r in results] == [
        ("first.csv", "failed"),
        ("second.csv", "done"),
    ]
    assert [r.outcome for r in feed.poll()] == ["failed"]  # tried again at each poll
    failed = [e for e in audited() if e["action"] == "csv.file_failed"]
    assert [e["detail"] for e in failed] == [{"file": "first.csv", "reason": "Permission denied"}]
    assert len(reports(db)) == 4 and (drop / "first.csv").exists()


def test_a_committed_file_that_cannot_be_moved_is_not_read_or_audited_again(
    drop, db, audited, monkeypatch
):
    feed = CsvFeed(drop, db)
    move = feed._move
    refusing = {"on": True}
    reads = []

    def flaky_move(path, target_dir, reason=None):
        if refusing["on"]:
            raise PermissionError(13, "Permission denied")  # as root, simulated (see above)
        return move(path, target_dir, reason)

    def counted_read(path, seen):
        reads.append(path.name)
        return CsvFeed._read(feed, path, seen)

    monkeypatch.setattr(feed, "_move", flaky_move)
    monkeypatch.setattr(feed, "_read", counted_read)
    (drop / "stuck.csv").write_text(GOOD, "utf-8")
    assert [r.outcome for r in settle(feed)] == ["failed"]  # rows committed, move refused
    before = actions(audited)
    for _ in range(3):
        assert [r.outcome for r in feed.poll()] == ["failed"]  # only the move is retried
    assert actions(audited) == before  # no csv.duplicate (or anything) at every poll
    assert before.count("csv.received") == 2 and before.count("csv.file_failed") == 1
    assert reads == ["stuck.csv"]

    os.utime(drop / "stuck.csv")  # touched, same bytes: read once more, still not re-stored
    feed.poll()
    assert [r.outcome for r in feed.poll()] == ["failed"]
    assert actions(audited) == before and len(reads) == 2

    refusing["on"] = False  # the file system is fixed: the file is moved, nothing re-stored
    [result] = feed.poll()
    assert (result.outcome, result.stored) == ("done", 2)
    assert (drop / "done" / "stuck.csv").exists() and not (drop / "stuck.csv").exists()
    assert actions(audited) == before and len(reports(db)) == 2


def test_a_database_error_keeps_report_text_and_identifiers_out_of_the_application_log(
    drop, feed, db, audited, caplog
):
    # A real failure of the real database: a trigger refuses every report row. SQLAlchemy's
    # error then quotes the INSERT's parameters (the report text, the patient, the accession).
    with db.transaction() as session:
        session.execute(
            sql_text(
                "CREATE TRIGGER refuse_reports BEFORE INSERT ON reports "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    (drop / "secret.csv").write_text(
        "accession,patient_id,report\nACC-SECRET-1,PAT-SECRET-2,Opacity SECRET-3 noted.\n",
        "utf-8",
    )
    with caplog.at_level(logging.DEBUG):
        [result] = settle(feed)
    assert result.outcome == "failed" and reports(db) == []
    assert "SECRET" not in caplog.text
    assert "could not store secret.csv: IntegrityError (sqlite3.IntegrityError)" in caplog.text
    [failed] = [e for e in audited() if e["action"] == "csv.file_failed"]
    assert failed["detail"]["reason"].startswith("IntegrityError: ")  # the detail is audited
    assert "refused by the test" in failed["detail"]["reason"]
