"""The CSV drop folder: report tables dropped by a RIS export or by hand.

``poll()`` (scheduled by the node) takes each ``*.csv`` whose size and modification time did
not change since the previous poll (a file still being copied is left alone), stores its good
rows in one transaction, audits every row, and only then moves the file to ``done/`` (or
``rejected/`` with a ``<name>.reason.txt``). A crash between commit and move re-reads the file
on the next poll: each row's message id is ``<file sha256[:16]>:<line>``, so the second pass
finds duplicates, never double rows.

The folder is shared with whoever drops files, so nothing in it is trusted: only regular files
with one name are read, opened without following links, and only up to ``max_file_bytes``; a
link, a hard-linked file or any other odd entry named ``*.csv`` goes to ``rejected/`` unread.
``done/`` and ``rejected/`` must be real directories inside the folder: while either is a link
or not a directory, no file is processed (the problem is audited once, ``csv.folder_unusable``)
and the files wait for it to be fixed.

A file whose rows were committed (or whose rejection was audited) but that cannot be moved is
remembered by name, size, modification time and digest: later polls only retry the move, so
it is neither read nor audited again (no ``csv.duplicate`` rows at every poll) until it
changes. The application log never gets an exception's message (a database error quotes its
parameters: report text, identifiers); the audit event does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from models.hl7_escapes import decode_hl7_escapes
from node.feeds.csvtable import SECTION_COLUMNS, CsvRow, CsvTable, read_table
from node.feeds.errors import CsvFileRejected
from node.feeds.sections import FINDINGS, IMPRESSION, INDICATION, detect_sections
from node.feeds.values import normalise_status, parse_datetime_text
from node.logsafe import audit_text, describe
from node.uids import is_uid
from storage import audit
from storage.actions import Action
from storage.audit import Outcome
from storage.database import Database
from storage.identifiers import StudyIds
from storage.reports import ReportFieldTooLong, ReportOutcome, store_report

log = logging.getLogger(__name__)

SOURCE = "csv"
DEFAULT_MAX_TEXT_CHARS = 100_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class RowRejected(ValueError):
    """One row cannot be stored; the rest of its file still is."""


class _Seen(NamedTuple):
    """What a poll saw of a file: it is processed once two polls saw the same."""

    size: int
    mtime_ns: int


@dataclass
class FileResult:
    """What one poll did with one file."""

    name: str
    outcome: str  # "done" | "rejected" | "failed" (left in place for the next poll)
    stored: int = 0
    duplicates: int = 0
    rejected_rows: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    reason: str | None = None


class _Decided(NamedTuple):
    """A file whose outcome is committed and audited, waiting only to be moved."""

    seen: _Seen
    sha256: str | None  # None: rejected unread (over the size limit)
    target_dir: Path
    reason: str | None  # for its .reason.txt
    result: FileResult


class CsvFeed:
    """Polls a folder for CSV report files.

    Parameters
    ----------
    folder:
        The drop folder; ``done/`` and ``rejected/`` are created inside it.
    db:
        Where reports and audit events go.
    max_text_chars:
        Longest report text accepted in a row.
    max_file_bytes:
        Larger files are rejected unread.
    on_stored:
        Called after a file's commit when it stored at least one new report.
    """

    def __init__(
        self,
        folder: Path,
        db: Database,
        *,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.db = db
        self.max_text_chars = max_text_chars
        self.max_file_bytes = max_file_bytes
        self.on_stored = on_stored or (lambda: None)
        self.done_dir = self.folder / "done"
        self.rejected_dir = self.folder / "rejected"
        self._last_seen: dict[str, _Seen] = {}
        self._unusable: list[str] = []  # the subfolder problems last audited
        self._failing: set[tuple[str, str]] = set()  # (file, error) audited, not yet cleared
        self._decided: dict[str, _Decided] = {}  # by file name: committed, not yet moved

    def poll(self) -> list[FileResult]:
        """Process every CSV file that was already there, unchanged, at the previous poll.

        Returns
        -------
        list of FileResult
            One per file processed now (files seen for the first time wait for the next poll).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._subfolders_usable():
            return []
        seen: dict[str, _Seen] = {}
        ready: list[Path] = []
        results: list[FileResult] = []
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() != ".csv":
                continue
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # taken away since the listing
            if _plain_file(info):
                seen[path.name] = _Seen(info.st_size, info.st_mtime_ns)
                if self._last_seen.get(path.name) == seen[path.name]:
                    ready.append(path)
                continue
            kind = _entry_kind(info)
            refused = self._guarded(path, lambda p=path, k=kind: self._refuse_entry(p, k))
            results += [refused] if refused else []
        self._last_seen = seen
        # A remembered file that went away (moved or deleted by hand) is forgotten.
        self._decided = {name: d for name, d in self._decided.items() if name in seen}
        processed = [
            self._guarded(path, lambda p=path: self._process(p, seen[p.name])) for path in ready
        ]
        for result in processed:
            if result is not None and result.outcome != "failed":
                self._last_seen.pop(result.name, None)
        return results + [result for result in processed if result is not None]

    def _guarded(self, path: Path, step: Callable[[], FileResult | None]) -> FileResult | None:
        """``step()``, or a "failed" result when the file system refuses it (the file stays
        for the next poll, audited once per error, and the poll goes on with the others); None
        when the file went away meanwhile."""
        try:
            result = step()
        except FileNotFoundError:
            return None
        except OSError as exc:
            error = exc.strerror or type(exc).__name__
            if (path.name, error) not in self._failing:
                self._failing.add((path.name, error))
                self._audit_safely(Action.CSV_FILE_FAILED, {"file": path.name, "reason": error})
                log.error("cannot handle %s in the CSV drop folder: %s", path.name, error)
            return FileResult(path.name, "failed", reason=error)
        if result is not None and result.outcome != "failed":
            self._failing = {key for key in self._failing if key[0] != path.name}
        return result

    def _subfolders_usable(self) -> bool:
        """Create ``done/`` and ``rejected/`` where missing; False (audited once per new
        problem) while either is a link or not a directory: a file could not be moved."""
        problems = []
        for folder in (self.done_dir, self.rejected_dir):
            with contextlib.suppress(FileExistsError):  # a file or a link there: named below
                folder.mkdir(exist_ok=True)
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode):
                problems.append(f"{folder.name}/ is {_entry_kind(info)}, not a directory")
        if problems and problems != self._unusable:
            reason = "; ".join(problems) + ": no file is processed until it is a real directory"
            self._audit_safely(
                Action.CSV_FOLDER_UNUSABLE, {"folder": str(self.folder), "reason": reason}
            )
            log.error("CSV drop folder %s: %s", self.folder, reason)
        self._unusable = problems
        return not problems

    def _refuse_entry(self, path: Path, kind: str) -> FileResult:
        """Move a link or other non-file entry named ``*.csv`` to ``rejected/`` unread: what a
        link points to is never read, named or quoted."""
        reason = f"{kind}, not a plain regular file: not read"
        self._audit_safely(Action.CSV_FILE_REJECTED, {"file": path.name, "reason": reason})
        moved = self._move(path, self.rejected_dir, reason)
        log.warning("rejected %s: %s", path.name, reason)
        return FileResult(moved.name, "rejected", reason=reason)

    def _read(self, path: Path, seen: _Seen) -> bytes | None:
        """The file's bytes, read without following a link; None when it changed since it was
        seen (still being written, or replaced).

        Raises
        ------
        CsvFileRejected
            Over ``max_file_bytes`` (checked before reading a byte).
        """
        with os.fdopen(os.open(path, _OPEN_FLAGS), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not _plain_file(info) or _Seen(info.st_size, info.st_mtime_ns) != seen:
                return None
            if info.st_size > self.max_file_bytes:
                raise CsvFileRejected(
                    f"{info.st_size} bytes, over the {self.max_file_bytes} limit: not read"
                )
            data = handle.read(self.max_file_bytes + 1)
        return data if len(data) == info.st_size else None

    def _process(self, path: Path, seen: _Seen) -> FileResult | None:
        decided = self._decided.get(path.name)
        if decided is not None and decided.seen == seen:
            return self._move_decided(path, decided)  # unchanged: not read again
        try:
            data = self._read(path, seen)
        except CsvFileRejected as exc:
            return self._reject_file(path, seen, None, exc)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a link since the scan
                return self._refuse_entry(path, "a symbolic link")
            if exc.errno == errno.ENOENT:
                return None  # taken away since the scan
            raise
        if data is None:
            self._last_seen.pop(path.name, None)  # changed: wait until it is stable again
            return None
        sha256 = hashlib.sha256(data).hexdigest()
        if decided is not None:
            if decided.sha256 == sha256:  # touched, same bytes: still only the move to do
                self._decided[path.name] = decided._replace(seen=seen)
                return self._move_decided(path, self._decided[path.name])
            del self._decided[path.name]  # new content: a new file under the old name
        try:
            table = read_table(data)
        except CsvFileRejected as exc:
            return self._reject_file(path, seen, sha256, exc)
        try:
            result = self._store_rows(path.name, sha256, table)
        except Exception as exc:
            # Nothing was committed; the file stays and is tried again at the next poll. The
            # exception's text may quote the rows (SQL parameters): the audit event gets it.
            log.error("could not store %s: %s", path.name, describe(exc))
            self._audit_safely(
                Action.CSV_FILE_FAILED,
                {"file": path.name, "sha256": sha256, "reason": audit_text(exc)},
            )
            return FileResult(path.name, "failed", reason="database error")
        if result.stored:
            try:
                self.on_stored()
            except Exception:
                log.exception("on_stored callback failed")  # the rows are stored all the same
        if result.stored + result.duplicates == 0:
            reasons = "; ".join(f"line {n}: {r}" for n, r in result.rejected_rows[:5])
            reason = f"all {len(result.rejected_rows)} rows rejected ({reasons})"
            self._audit_safely(
                Action.CSV_FILE_REJECTED, {"file": path.name, "sha256": sha256, "reason": reason}
            )
            # Row reasons may quote cells: they go to the audit log and the reason file only.
            log.warning("%s: all %d rows rejected", path.name, len(result.rejected_rows))
            rejected = FileResult(
                path.name, "rejected", rejected_rows=result.rejected_rows, reason=reason
            )
            return self._file_away(
                path, _Decided(seen, sha256, self.rejected_dir, reason, rejected)
            )
        self._file_away(path, _Decided(seen, sha256, self.done_dir, None, result))
        log.info(
            "%s: %d stored, %d duplicates, %d rows rejected",
            path.name,
            result.stored,
            result.duplicates,
            len(result.rejected_rows),
        )
        return result

    def _store_rows(self, name: str, sha256: str, table: CsvTable) -> FileResult:
        result = FileResult(name, "done")
        with self.db.transaction() as session:
            for row in table.rows:
                message_id = f"{sha256[:16]}:{row.line}"
                ids = StudyIds(
                    accession=row.cells.get("accession", "").strip()[:64] or None,
                    patient_id=row.cells.get("patient_id", "").strip()[:64] or None,
                )
                detail = {"file": name, "line": row.line, "message_id": message_id}
                try:
                    fields = self._row_fields(row, table.encoding)
                    outcome = store_report(
                        session, source=SOURCE, message_id=message_id, sender=name, **fields
                    )
                    if outcome == ReportOutcome.CONFLICT:  # same bytes, same line: cannot differ
                        raise RowRejected("message id already used by a different row")
                except (RowRejected, ReportFieldTooLong) as exc:
                    result.rejected_rows.append((row.line, str(exc)))
                    audit.record(
                        session,
                        Action.CSV_ROW_REJECTED,
                        Outcome.FAILURE,
                        ids=ids,
                        detail=detail | {"reason": str(exc)},
                    )
                    continue
                duplicate = outcome == ReportOutcome.DUPLICATE
                result.duplicates += duplicate
                result.stored += not duplicate
                action = Action.CSV_DUPLICATE if duplicate else Action.CSV_RECEIVED
                audit.record(
                    session,
                    action,
                    Outcome.SUCCESS,
                    ids=dataclasses.replace(ids, study_uid=fields["study_uid"]),
                    detail=detail,
                )
            audit.record(
                session,
                Action.CSV_FILE_DONE,
                Outcome.WARNING if result.rejected_rows else Outcome.SUCCESS,
                detail={
                    "file": name,
                    "sha256": sha256,
                    "encoding": table.encoding,
                    "stored": result.stored,
                    "duplicates": result.duplicates,
                    "rejected_rows": len(result.rejected_rows),
                    "ignored_columns": table.ignored_columns,
                },
            )
        return result

    def _row_fields(self, row: CsvRow, encoding: str) -> dict[str, Any]:
        cells = _decode_text_cells(
            {name: value.strip() for name, value in row.cells.items()}, encoding
        )
        if row.extra:
            raise RowRejected(f"{len(row.extra)} more cell(s) than the header has columns")
        kind = (cells.get("kind") or "report").lower()
        if kind not in ("report", "indication"):
            raise RowRejected(f"kind {kind!r} is neither 'report' nor 'indication'")
        text, section_cells = _row_text(cells, kind)
        study_uid = cells.get("study_uid") or None
        missing = [
            label
            for label, value in (
                ("patient id", cells.get("patient_id")),
                ("accession (or study_uid)", cells.get("accession") or study_uid),
                ("report text", text),
            )
            if not value
        ]
        if missing:
            raise RowRejected(f"missing {', '.join(missing)}")
        if len(text) > self.max_text_chars:
            raise RowRejected(f"report text of {len(text)} characters, over {self.max_text_chars}")
        if study_uid and not is_uid(study_uid):
            raise RowRejected(f"study_uid {study_uid[:70]!r} is not a valid DICOM UID")
        try:
            observed_at = parse_datetime_text(cells.get("time", ""))
        except ValueError as exc:
            raise RowRejected(f"time: {exc}") from None
        sections = section_cells or detect_sections((line, None) for line in text.split("\n"))
        return {
            "kind": kind,
            "text": text,
            "accession": cells.get("accession") or None,
            "study_uid": study_uid,
            "patient_id": cells["patient_id"],
            "status": normalise_status(cells.get("status", "")),
            "sections": sections,
            "observed_at": observed_at,
        }

    def _reject_file(
        self, path: Path, seen: _Seen, sha256: str | None, exc: CsvFileRejected
    ) -> FileResult:
        reason = str(exc)
        self._audit_safely(
            Action.CSV_FILE_REJECTED, {"file": path.name, "sha256": sha256, "reason": reason}
        )
        # The full reason may quote the file (a headerless file's first row is a patient's):
        # the application log gets the part that quotes nothing.
        log.warning("rejected %s: %s", path.name, exc.reason)
        rejected = FileResult(path.name, "rejected", reason=reason)
        return self._file_away(path, _Decided(seen, sha256, self.rejected_dir, reason, rejected))

    def _file_away(self, path: Path, decided: _Decided) -> FileResult:
        """Move a file whose outcome is committed and audited. Remembered first: when the move
        fails (an OSError, audited once by ``_guarded``), the next polls only retry it."""
        self._decided[path.name] = decided
        return self._move_decided(path, decided)

    def _move_decided(self, path: Path, decided: _Decided) -> FileResult:
        moved = self._move(path, decided.target_dir, decided.reason)
        del self._decided[path.name]
        if decided.target_dir == self.rejected_dir:
            return dataclasses.replace(decided.result, name=moved.name)
        return decided.result

    def _move(self, path: Path, target_dir: Path, reason: str | None = None) -> Path:
        """Move ``path`` into ``target_dir`` (checked a real directory by this poll) under a
        name not taken there, writing ``<name>.reason.txt`` beside it; nothing already in
        ``target_dir`` is overwritten or followed."""
        target = target_dir / path.name
        while True:
            if not os.path.lexists(target):
                try:
                    if reason is not None:
                        _write_new(target.with_name(target.name + ".reason.txt"), reason + "\n")
                    break
                except FileExistsError:
                    pass
            # A file of the same name was dropped before: keep both.
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            target = target_dir / f"{path.stem}.{stamp}{path.suffix}"
        os.replace(path, target)
        return target

    def _audit_safely(self, action: Action, detail: dict[str, Any]) -> None:
        try:
            with self.db.transaction() as session:
                audit.record(session, action, Outcome.FAILURE, detail=detail)
        except Exception as exc:  # the detail may quote rows: not into the application log
            log.error("could not record %s: %s", action, describe(exc))


def _plain_file(info: os.stat_result) -> bool:
    """A regular file with one name: a second hard link could be a file the dropper may not
    read, linked in for the node to read it."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def _entry_kind(info: os.stat_result) -> str:
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(info.st_mode):
        return "a directory"
    if stat.S_ISREG(info.st_mode):
        return f"a file with {info.st_nlink} hard links" if info.st_nlink > 1 else "a regular file"
    return "a special file"


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` with ``text``; FileExistsError if anything (a link too) is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _decode_text_cells(cells: dict[str, str], encoding: str) -> dict[str, str]:
    """The row with HL7 escapes decoded in its report text and section columns, once, here.

    Report tables come out of a RIS that received the reports over HL7 and may keep them as
    HL7 wrote them: the IU X-ray export has no raw ``|``, ``^`` or ``~`` in its 3,851 reports
    (``&`` only in the XML entities of its conversion, ``&gt;``) but one ``\\T\\``, an
    escaped ``&`` (``asthma \\T\\ XXXX``). CSV has no escape of its own that a backslash
    sequence could mean instead; an unknown sequence is kept as written. ``\\Xhh\\``
    bytes are read in the file's encoding.
    """
    decoded = dict(cells)
    for name in ("text", *SECTION_COLUMNS):
        if cells.get(name):
            decoded[name] = decode_hl7_escapes(cells[name], codec=encoding).strip()
    return decoded


def _row_text(cells: dict[str, str], kind: str) -> tuple[str, dict[str, str]]:
    """The row's text: its report column, else its section columns joined under headings."""
    section_cells = {s: cells[s] for s in SECTION_COLUMNS if cells.get(s)}
    if cells.get("text"):
        return cells["text"], section_cells
    # Indication and comparison alone are not a report: no radiologist has written one yet.
    substance = (FINDINGS, IMPRESSION) if kind == "report" else (INDICATION,)
    if not any(s in section_cells for s in substance):
        return "", section_cells
    return "\n\n".join(f"{s}:\n{t}" for s, t in section_cells.items()), section_cells
