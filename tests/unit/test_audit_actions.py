"""Audit actions are named by ``storage.actions.Action``, never spelled as strings in the code
that records them, and stored as the same names the audit log has always held."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from storage import audit
from storage.actions import Action, Subject
from storage.audit import AuditFilter
from storage.database import Database
from storage.identifiers import StudyIds

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "storage", "models", "training")


# Calls that record an audit event, or hand its action on to code that does.
_RECORDING_CALL = re.compile(r"^(record|on_refused|_audit\w*)$")
_LOOKS_LIKE_AN_ACTION = re.compile(r"^[a-z0-9_]+\.[a-z_]+$")
_KNOWN = {action.value for action in Action}


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def spelled_actions(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of each action written as a string: any literal that is an action's name,
    and any dotted literal handed to a recording call (a name the enum does not have yet)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in _KNOWN:
            found.add((node.lineno, node.value))
        elif isinstance(node, ast.Call) and _RECORDING_CALL.match(_called_name(node)):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                text = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(text, str) and _LOOKS_LIKE_AN_ACTION.match(text):
                    found.add((arg.lineno, text))
    return sorted(found)


def literals_by_file() -> dict[str, list[tuple[int, str]]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            if name == "storage/actions.py" or "/migrations/" in name:
                continue
            found = spelled_actions(ast.parse(path.read_text("utf-8"), filename=name))
            if found:
                out[name] = found
    return out


def test_no_module_spells_an_audit_action_as_a_string():
    spelled = literals_by_file()
    offending = [
        f"{name}:{line}: {value!r} (use Action.{value.upper().replace('.', '_')})"
        for name, found in spelled.items()
        for line, value in found
    ]
    assert offending == []


def test_the_walk_finds_an_action_spelled_in_any_position():
    source = (
        "audit.record(session, 'study.queued', **ids)\n"
        "action, outcome = 'job.failed', Outcome.FAILURE\n"
        "self.refusals.record('hl7.not_in_the_enum_yet', address)\n"
        "access.record('GET /', {}, 1)\n"
        "page('study.html')\n"
    )
    assert spelled_actions(ast.parse(source)) == [
        (1, "study.queued"),
        (2, "job.failed"),
        (3, "hl7.not_in_the_enum_yet"),
    ]


def test_every_action_is_named_by_its_subject_and_verb():
    assert len(Action.__members__) == len(Action), "two members share one stored name"
    for action in Action:
        subject, _, verb = action.value.partition(".")
        assert action.name == f"{subject}_{verb}".upper()
        assert action.subject == Subject(subject)
        assert action.startswith(action.subject.prefix)
    assert {action.subject for action in Action} == set(Subject)


@pytest.fixture
def db(tmp_path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'audit.db'}")
    database.create_schema()
    return database


def test_an_action_is_stored_and_filtered_by_its_plain_name(db):
    ids = StudyIds(study_uid="1.2.3", accession="ACC-1", patient_id="P-1")
    with db.transaction() as session:
        audit.record(session, Action.HL7_RECEIVED, ids=ids)
        audit.record(session, Action.HL7_REJECTED, audit.Outcome.FAILURE)
        audit.record(session, Action.STUDY_QUEUED, ids=ids)
    with db.transaction() as session:
        received = audit.query(session, AuditFilter(action="hl7.received"))
        family = audit.query(session, AuditFilter(action=Subject.HL7.prefix))
        by_accession = audit.query(session, AuditFilter(accession="ACC-1"))
        shown = [audit.as_dict(e) for e in received]
        assert [type(e.action) for e in received] == [str]
        assert [e.action for e in family] == ["hl7.received", "hl7.rejected"]
        assert [e.action for e in by_accession] == ["hl7.received", "study.queued"]
    assert [(d["study_uid"], d["accession"], d["patient_id"]) for d in shown] == [
        ("1.2.3", "ACC-1", "P-1")
    ]


def test_a_study_is_named_by_ids_or_one_by_one_not_both(db):
    with db.transaction() as session, pytest.raises(TypeError, match="not both"):
        audit.record(session, Action.STUDY_DONE, ids=StudyIds("1.2.3"), accession="ACC-1")
