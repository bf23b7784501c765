"""A study's and a job's states change only along the transitions storage.schema draws: every
move in the tables is made, every other move raises, and the queue's own steps keep to them."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from sqlalchemy import select

from storage import jobs
from storage.database import Database
from storage.schema import (
    JOB_TRANSITIONS,
    STUDY_TRANSITIONS,
    IllegalTransition,
    Job,
    JobState,
    Study,
    StudyState,
    change_state,
)
from storage.studies import add_instance
from support.instances import frontal_cr


def states_of(kind: type) -> list[str]:
    return [v for k, v in vars(kind).items() if k.isupper() and isinstance(v, str)]


TABLES = [
    (Study, StudyState, STUDY_TRANSITIONS),
    (Job, JobState, JOB_TRANSITIONS),
]


@pytest.mark.parametrize(("row_type", "states", "table"), TABLES, ids=["study", "job"])
def test_every_move_of_the_table_is_allowed_and_every_other_raises(row_type, states, table):
    every = states_of(states)
    assert set(table) == set(every)  # the table names each state, none other
    for current in every:
        for target in every:
            row = row_type(id=7, state=current)
            if target == current or target in table[current]:
                change_state(row, target)
                assert row.state == target
            else:
                with pytest.raises(IllegalTransition, match=f"7: {current} -> {target} is not"):
                    change_state(row, target)
                assert row.state == current  # refused: unchanged


@pytest.mark.parametrize(("row_type", "states", "table"), TABLES, ids=["study", "job"])
def test_the_diagram_beside_the_states_names_every_state(row_type, states, table):
    diagram = inspect.getdoc(states)
    for state in states_of(states):
        assert state.upper() in diagram, state


def test_the_queue_refuses_to_fail_a_run_that_was_delivered(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    with db.transaction() as session:
        add_instance(session, frontal_cr("1.1"), relpath="x", size=1, sha256="0", calling_ae="X")
        job = jobs.queue_run(session, session.scalar(select(Study)))
    with db.transaction() as session:
        (job,) = jobs.claim_batch(session, 1)
        change_state(job, JobState.SENDING)
        assert jobs.finish_if_delivered(session, job)  # no outbox items owed
        assert job.study.state == StudyState.DONE
    with db.transaction() as session:
        job = session.scalar(select(Job))
        with pytest.raises(IllegalTransition, match="done -> failed"):
            jobs.fail(session, job, "too late")
        with pytest.raises(IllegalTransition, match="done -> queued"):
            jobs.requeue(session, job)
