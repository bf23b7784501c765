"""``cxrnode predict`` on real files with the shipped default package: JSON and table output,
--heatmap's PNGs, a bad file among good ones (reported, the others still run, exit 2), and the
audit of each file."""

from __future__ import annotations

import json
from pathlib import Path

from node.admin.commands import open_database
from node.cli import main
from node.config import load_settings
from storage import audit


def test_json_and_heatmaps_for_good_files_and_a_bad_one_among_them(
    tmp_path: Path, monkeypatch, capsys, rsna_dicom: Path, nih_png: Path
):
    monkeypatch.setenv("CXRNODE_DATA_DIR", str(tmp_path / "var"))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    heatmaps = tmp_path / "maps"

    argv = ["predict", str(rsna_dicom), str(bad), str(nih_png), "--format", "json"]
    status = main([*argv, "--heatmap", str(heatmaps), "--report", "IMPRESSION: clear"])

    out, err = capsys.readouterr()
    assert status == 2
    assert "[2/3]" in err and "notes.txt: neither a DICOM file" in err and "1 of 3" in err
    answers = json.loads(out)
    assert [a.get("format") for a in answers] == ["dicom", None, "png"]
    assert answers[1] == {"path": str(bad), "error": "unreadable", "message": answers[1]["message"]}
    for answer in (answers[0], answers[2]):
        probabilities = [f["probability"] for f in answer["findings"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert answer["report"]["given"] and not answer["report"]["read"]  # image-only
    written = sorted(p.name for p in heatmaps.iterdir())
    for path, answer in ((rsna_dicom, answers[0]), (nih_png, answers[2])):
        expected = {f"{path.stem}.overview.png"} | {
            f"{path.stem}.gradcam.{e['label']}.png" for e in answer["explanations"]
        }
        assert expected <= set(written)
    assert len(written) == 2 + len(answers[0]["explanations"]) + len(answers[2]["explanations"])

    db = open_database(load_settings())
    with db.reading() as session:
        events = [
            audit.as_dict(e)
            for e in audit.query(session, audit.AuditFilter(action="model.predicted"))
        ]
    assert [e["outcome"] for e in events] == ["success", "failure", "success"]
    assert all(e["actor_user"] and e["detail"]["via"] == "cli" for e in events)
    assert events[0]["detail"]["sha256"] == answers[0]["sha256"]


def test_the_table_lists_findings_by_probability_with_their_calls(
    tmp_path: Path, monkeypatch, capsys, rsna_dicom: Path
):
    monkeypatch.setenv("CXRNODE_DATA_DIR", str(tmp_path / "var"))
    assert main(["predict", str(rsna_dicom), "--package", "default"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # one file: no progress lines
    header, *rows = out.strip().splitlines()
    assert str(rsna_dicom) in header and "cxrnode-abnormal-pneumonia" in header
    probabilities = [float(row.split()[1]) for row in rows]
    assert len(rows) == 2 and probabilities == sorted(probabilities, reverse=True)
    assert all(row.split()[2] in ("PRESENT", "absent") for row in rows)
