"""Stored embeddings and the search for similar earlier cases, on a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from node import similar
from node.admin.commands import cli_user
from node.cli import main
from node.similar import NoEmbedding, UnknownStudy, nearest, similar_to_study
from storage import audit, embeddings
from storage.database import Database
from storage.schema import Study
from storage.studies import add_instance
from support.embeddings import MODEL, finished_run
from support.instances import frontal_cr

OTHER = "other-model@2.0.0+fedcba987654"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    return db


@pytest.fixture
def archive(db: Database) -> Database:
    """Four studies of MODEL around the x axis, nearer and nearer to (1, 0, 0), and one of
    OTHER exactly there."""
    finished_run(db, "1.1", [[1.0, 0.0, 0.0]], effusion=0.9, accession="ACC1")
    finished_run(db, "1.2", [[1.0, 0.1, 0.0]], accession="ACC2")
    finished_run(db, "1.3", [[1.0, 0.5, 0.0]])
    finished_run(db, "1.4", [[0.0, 1.0, 0.0]])
    finished_run(db, "1.9", [[1.0, 0.0, 0.0]], model_id=OTHER)
    return db


def test_an_embedding_is_stored_as_little_endian_float32_and_read_back(db):
    vector = np.array([1.5, -2.0, 3.25], dtype=">f8")  # any dtype and byte order in
    finished_run(db, "1.1", [vector, [0.0, 1.0, 2.0]])
    with db.reading() as session:
        study = session.query(Study).one()
        stored = embeddings.of_study(session, study.id)
        row = study.id, stored.model_id, stored.vectors.dtype, stored.vectors.shape
        assert row == (study.id, MODEL, np.float32, (2, 3))
        np.testing.assert_array_equal(stored.vectors[0], [1.5, -2.0, 3.25])
    assert embeddings.to_bytes(vector) == b"\x00\x00\xc0\x3f\x00\x00\x00\xc0\x00\x00\x50\x40"
    with pytest.raises(ValueError, match="takes 12 bytes, not 8"):
        embeddings.from_bytes(b"\x00" * 8, 3)


def test_nearest_ranks_same_model_studies_by_cosine_distance_without_the_query(archive):
    with archive.reading() as session:
        cases = nearest(session, np.array([2.0, 0.0, 0.0]), MODEL, k=3, exclude_study="1.1")
    assert [c.study.study_uid for c in cases] == ["1.2", "1.3", "1.4"]  # never 1.9 (OTHER)
    assert [c.rank for c in cases] == [1, 2, 3]
    assert cases[0].distance == pytest.approx(1 - 1 / np.sqrt(1.01), abs=1e-6)
    assert cases[2].distance == pytest.approx(1.0)
    assert cases[0].study.accession == "ACC2" and cases[0].model_id == MODEL
    assert [(f.name, f.probability, f.present) for f in cases[0].findings][0] == (
        "Effusion",
        0.2,
        False,
    )


def test_k_larger_than_the_gallery_answers_every_study_once(archive):
    with archive.reading() as session:
        cases = nearest(session, np.array([1.0, 0.0, 0.0]), MODEL, k=50)
        assert [c.study.study_uid for c in cases] == ["1.1", "1.2", "1.3", "1.4"]
        assert nearest(session, np.ones(3), "never-stored@1", k=5) == []
        with pytest.raises(ValueError, match="has 2 values; .* have 3"):
            nearest(session, np.ones(2), MODEL)
        with pytest.raises(ValueError, match="at least 1"):
            nearest(session, np.ones(3), MODEL, k=0)


def test_a_study_is_searched_by_its_latest_run_only(archive):
    finished_run(archive, "1.4", [[1.0, 0.0, 0.0]], effusion=0.7)  # a re-run: now like 1.1
    with archive.reading() as session:
        answer = similar_to_study(session, "ACC1", k=1)
    assert (answer.study.study_uid, answer.run, answer.model_id) == ("1.1", 1, MODEL)
    (case,) = answer.cases
    assert (case.study.study_uid, case.run, case.distance) == ("1.4", 2, 0.0)
    assert [f.name for f in case.present] == ["Effusion"]  # the findings of run 2
    # A re-run by another package takes the study out of MODEL's gallery.
    finished_run(archive, "1.4", [[1.0, 0.0, 0.0]], model_id=OTHER)
    with archive.reading() as session:
        assert [c.study.study_uid for c in similar_to_study(session, "1.1", k=1).cases] == ["1.2"]
        assert [c.study.study_uid for c in similar_to_study(session, "1.9").cases] == ["1.4"]


def test_a_study_of_several_images_is_the_mean_of_their_directions(db):
    finished_run(db, "1.1", [[10.0, 0.0], [0.0, 1.0]])  # lengths do not weigh
    finished_run(db, "1.2", [[1.0, 1.0]])
    with db.reading() as session:
        (case,) = similar_to_study(session, "1.2").cases
    assert case.study.study_uid == "1.1" and case.distance == pytest.approx(0.0, abs=1e-6)


def test_the_gallery_is_kept_until_an_embedding_is_added_or_deleted(archive):
    with archive.reading() as session:
        kept = similar._gallery(session, MODEL)
        assert similar._gallery(session, MODEL) is kept
    finished_run(archive, "1.5", [[1.0, 0.0, 0.01]])
    with archive.reading() as session:
        reloaded = similar._gallery(session, MODEL)
        assert reloaded is not kept and len(reloaded.study_ids) == 5
    with archive.transaction() as session:
        assert embeddings.delete_of_studies(session, [reloaded.study_ids[0]]) == 1
    with archive.reading() as session:
        assert [c.study.study_uid for c in nearest(session, np.ones(3), MODEL, k=9)][-1] != "1.1"
        assert len(similar._gallery(session, MODEL).study_ids) == 4


def test_a_study_without_an_embedding_says_to_rerun_it(archive):
    with archive.transaction() as session:
        add_instance(session, frontal_cr("1.7"), relpath="x", size=1, sha256="0", calling_ae="X")
    with archive.reading() as session:
        with pytest.raises(NoEmbedding, match="no embedding stored for this study; rerun it"):
            similar_to_study(session, "1.7")
        with pytest.raises(UnknownStudy, match="no study with .* '9.9'"):
            similar_to_study(session, "9.9")


@pytest.fixture
def cxrnode(archive, monkeypatch, tmp_path, capsys):
    """Run ``cxrnode`` against the archive's database; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("CXRNODE_DB_URL", archive.url)
    monkeypatch.setenv("CXRNODE_DATA_DIR", str(tmp_path / "data"))

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def similar_events(db: Database) -> list:
    with db.reading() as session:
        return audit.query(session, audit.AuditFilter(action="admin.similar"))


def test_cli_names_the_nearest_studies_and_audits_who_asked_for_which(cxrnode, archive):
    code, out, _ = cxrnode("similar", "ACC1", "-k", "2", "--format", "json")
    assert code == 0
    answer = json.loads(out)
    assert answer["study"]["study_uid"] == "1.1" and answer["model_id"] == MODEL
    assert [(c["rank"], c["study"]["study_uid"]) for c in answer["cases"]] == [
        (1, "1.2"),
        (2, "1.3"),
    ]
    assert answer["cases"][0]["findings"][0] == {
        "name": "Effusion",
        "probability": 0.2,
        "present": False,
    }
    code, out, _ = cxrnode("similar", "1.2")
    assert code == 0 and "Study 1.2 (accession ACC2), run 1" in out
    assert "1.1" in out and "Effusion 0.90" in out and "(top: Effusion 0.20" in out
    first, second = similar_events(archive)
    assert (first.actor_user, first.study_uid, first.accession) == (cli_user(), "1.1", "ACC1")
    assert first.detail == {
        "query": "ACC1",
        "k": 2,
        "via": "cli",
        "run": 1,
        "model": MODEL,
        "returned": ["1.2", "1.3"],
    }
    assert second.detail["returned"] == ["1.1", "1.3", "1.4"]  # k defaults to 5


def test_cli_refuses_an_unknown_study_and_one_without_an_embedding(cxrnode, archive):
    with archive.transaction() as session:
        add_instance(session, frontal_cr("1.7"), relpath="x", size=1, sha256="0", calling_ae="X")
    code, out, err = cxrnode("similar", "1.7")
    assert (code, out) == (2, "") and "no embedding stored for this study; rerun it" in err
    code, _, err = cxrnode("similar", "9.9.9")
    assert code == 2 and "no study with Study Instance UID or accession '9.9.9'" in err
    missing, unknown = similar_events(archive)
    assert (missing.study_uid, missing.outcome) == ("1.7", "warning")
    assert "rerun it" in missing.detail["reason"] and unknown.study_uid is None
    with pytest.raises(SystemExit) as refused:
        cxrnode("similar", "1.1", "-k", "0")
    assert refused.value.code == 2
