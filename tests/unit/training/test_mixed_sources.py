"""The new real sources (NIH at 512 px with its label rows, Kermany's paediatric folders), mixed
into one dataset with patient-level splits across all of them, and the view-position check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.config import load_run_config
from training.datasets import kermany_patient, read_kermany, read_nih_labelled_folders
from training.errors import DatasetError, TrainingError
from training.metrics import view_check
from training.run import _splits
from training.splits import check_for_leakage

# The six patients the MANIFEST says are in both NIH subsets.
SHARED_NIH_PATIENTS = {"61", "150", "165", "193", "211", "218"}


def test_nih_labelled_folders_take_targets_patients_and_views_from_the_label_rows(nih512: Path):
    data = read_nih_labelled_folders(nih512)
    assert data.vocabulary == "abnormal-pneumonia" and not data.missing
    assert len(data.samples) == 796 and len({s.patient_id for s in data.samples}) == 547
    by_folder = {
        folder: [s for s in data.samples if s.image.parent.name == folder]
        for folder in ("No_findings", "Pneumonia")
    }
    # 396 and 400 on disk (the MANIFEST's text has the two counts the other way round).
    assert len(by_folder["No_findings"]) == 396 and len(by_folder["Pneumonia"]) == 400
    assert all(s.targets.tolist() == [0.0, 0.0] for s in by_folder["No_findings"])
    assert all(s.targets.tolist() == [1.0, 1.0] for s in by_folder["Pneumonia"])
    # The confound the MANIFEST warns of, visible in the data itself.
    ap_share = {k: np.mean([s.view == "AP" for s in v]) for k, v in by_folder.items()}
    assert ap_share["No_findings"] > 0.6 > ap_share["Pneumonia"]
    multi = read_nih_labelled_folders(nih512, vocabulary="nih-chestxray14")
    names = list(multi.label_names)
    # Co-labels of the pneumonia images are kept in the 14-label vocabulary.
    assert multi.samples[-1].targets[names.index("Pneumonia")] == 1.0
    assert sum(s.targets.sum() > 1 for s in multi.samples) > 50


def test_kermany_folders_give_the_public_split_and_patients_from_file_names(kermany: Path):
    data = read_kermany(kermany)
    counts: dict[tuple[str, int], int] = {}
    for sample in data.samples:
        key = (data.given_split[sample.key], int(sample.targets[0]))
        counts[key] = counts.get(key, 0) + 1
    assert counts == {("train", 0): 1341, ("train", 1): 3875, ("test", 0): 234, ("test", 1): 390}
    # Patients are numbered anew per split folder: the key carries the split.
    assert all(s.patient_id.startswith(data.given_split[s.key] + "/") for s in data.samples)
    assert len({s.patient_id for s in data.samples}) < len(data.samples)
    assert kermany_patient("person1000_bacteria_2931.jpeg") == "person1000"
    assert kermany_patient("person12_virus_44.jpeg") == "person12"
    assert kermany_patient("NORMAL2-IM-1427-0001.jpeg") == "IM-1427"
    assert kermany_patient("IM-0115-0001.jpeg") == "IM-0115"
    with pytest.raises(DatasetError):
        kermany_patient("scan.jpeg")


def _mixed_config(tmp_path: Path, sources: str, extra: str = "") -> Path:
    path = tmp_path / "mixed.toml"
    path.write_text(
        f"""
[run]
name = "mixed"
output = "{tmp_path / "run"}"
[data]
reader = "mixed"
vocabulary = "abnormal-pneumonia"
split = "mixed"
fractions = {{ train = 0.6, val = 0.2, test = 0.2 }}
text_source = "none"
{extra}
{sources}
"""
    )
    return path


NIH_BOTH = """
[[data.sources]]
reader = "nih_labelled_folders"
population = "nih"
root = "${CXRNODE_SHARED_DATA}/nih-chestxray14-1000-darkcovidnet"
[[data.sources]]
reader = "nih_folders"
population = "nih"
vocabulary = "abnormal-pneumonia"
root = "${CXRNODE_SHARED_DATA}/nih-chestxray14-thumbs-kcr2019/NIH1000"
data_entry_csv = "${CXRNODE_SHARED_DATA}/nih-chestxray14-samples/Data_Entry_2017_v2020.csv.gz"
"""

KERMANY = """
[[data.sources]]
reader = "kermany"
population = "kermany"
split = "given"
keep = { train = 300 }
root = "${CXRNODE_SHARED_DATA}/kermany-pediatric-pneumonia-224/dataset"
[[data.sources]]
reader = "rsna_pneumonia"
population = "rsna"
vocabulary = "abnormal-pneumonia"
root = "${CXRNODE_SHARED_DATA}/rsna-pneumonia-sample"
"""


def test_a_mixed_config_splits_every_source_by_patient_across_both_nih_sets(
    tmp_path: Path, shared_data: Path
):
    config = load_run_config(_mixed_config(tmp_path, NIH_BOTH + KERMANY))
    data = config.read_data()
    sources = {s.source for s in data.samples}
    assert len(sources) == 4
    nih_patients = {
        source: {s.patient_id for s in data.samples if s.source == source}
        for source in sources
        if source.startswith("NIH")
    }
    shared = set.intersection(*nih_patients.values())
    # The two NIH sets meet in one namespace, so their six shared patients are one patient each.
    assert {p.removeprefix("nih:") for p in shared} == SHARED_NIH_PATIENTS
    parts, _ = _splits(config, data)
    check_for_leakage(parts)  # raises if a patient were on two sides
    for patient in shared:
        sides = {
            name for name, samples in parts.items() if patient in {s.patient_id for s in samples}
        }
        assert len(sides) == 1
    # Kermany's public test split stays its test part; its validation comes out of train.
    kermany_test = [s for s in parts["test"] if s.source.startswith("Kermany")]
    assert len(kermany_test) == 624
    assert any(s.source.startswith("Kermany") for s in parts["val"])
    assert sum(s.source.startswith("Kermany") for s in parts["train"]) <= 300
    # The thumbnails' own folders do not decide: they are split with the other NIH set.
    thumbs = [s for s in data.samples if s.source.startswith("NIH ChestX-ray14 (normal")]
    assert thumbs and all(s.key not in data.given_split for s in thumbs)


def test_splitting_two_nih_sets_apart_is_caught_by_the_leakage_check(tmp_path: Path, shared_data):
    # Each set in its own namespace would hide the shared patients from the split...
    apart = NIH_BOTH.replace(
        'population = "nih"\nvocabulary', 'population = "nih-thumbs"\nvocabulary'
    )
    config = load_run_config(_mixed_config(tmp_path, apart))
    data = config.read_data()
    pooled = {p.split(":", 1)[1] for p in {s.patient_id for s in data.samples}}
    assert len(pooled) < len({s.patient_id for s in data.samples})  # the same people twice
    # ...and a given split that puts one of them on both sides fails loudly when they share one.
    together = load_run_config(_mixed_config(tmp_path, NIH_BOTH)).read_data()
    patient = "nih:61"
    mine = [s for s in together.samples if s.patient_id == patient]
    assert len(mine) >= 2
    with pytest.raises(TrainingError, match="61"):
        check_for_leakage({"train": mine[:1], "test": mine[1:]})


def test_a_mixed_config_needs_a_vocabulary_and_sources(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('[data]\nreader = "mixed"\n')
    with pytest.raises(TrainingError, match="vocabulary"):
        load_run_config(path).read_data()


def test_view_check_separates_a_view_detector_from_a_finding_detector():
    rng = np.random.default_rng(0)
    views = np.array(["AP"] * 100 + ["PA"] * 100)
    finding = np.concatenate([rng.random(100) < 0.2, rng.random(100) < 0.8]).astype(float)
    targets, mask = finding[:, None], np.ones((200, 1))
    view_detector = (views == "PA").astype(float)[:, None] + rng.normal(0, 0.01, (200, 1))
    check = view_check(targets, mask, view_detector, list(views), ["Abnormal"], bootstrap=50)
    row = check["labels"]["Abnormal"]
    assert row["view_alone"]["auroc"] < 0.3  # AP says "normal" here
    assert row["model_all"]["auroc"] > 0.7  # looks good overall...
    assert 0.35 < row["model_within_ap"]["auroc"] < 0.65  # ...and is chance within a view
    assert 0.35 < row["model_within_pa"]["auroc"] < 0.65
    assert check["ap"] == check["pa"] == 100


def test_the_committed_all_sources_config_reads_and_splits_without_leakage(shared_data: Path):
    config = load_run_config(
        Path(__file__).parents[3] / "training" / "configs" / "mixed-all-sources.toml"
    )
    data = config.read_data()
    assert len({s.source for s in data.samples}) == 4
    parts, dropped = _splits(config, data)
    assert dropped == 0 and all(parts.values())
    check_for_leakage(parts)
