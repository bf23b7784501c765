"""Training configs: one TOML file says what data, which model, how to train, what to export.

``${CXRNODE_SHARED_DATA}`` in a path is the staged public data (``../shared/data`` beside the
repository unless the variable says otherwise); other relative paths are relative to the
current directory. See ``training/configs/`` for the configs behind the published figures.

::

    [run]
    kind = "train"            # train (split, fit, evaluate, export) | crossval (k folds)
    name = "nih-thumbs"
    output = "runs/nih-thumbs"

    [data]
    reader = "nih_folders"    # see READERS
    root = "${CXRNODE_SHARED_DATA}/nih-chestxray14-thumbs-kcr2019/NIH1000"
    split = "given"           # given | patient (with fractions) | mixed (see below)
    text_source = "report"    # report | indication | none

    # Several sources in one dataset (training.datasets.mix): reader = "mixed" with a
    # vocabulary, split = "mixed" (each source's given split where it says split = "given",
    # one patient-level split over all the others together), and one table per source:
    # [[data.sources]]
    # reader = "kermany"      # any reader above, with its own arguments
    # population = "kermany"  # sources of one population share patient ids (two NIH subsets)
    # split = "given"         # given | patient | unlabelled (semi-supervised images only)
    # keep = { train = 2000 } # at most this many samples of a split, whole patients, seeded

    [model]
    preset = "seed-002"       # or an [model.architecture] table (merged over the preset's)
    image_size = 64
    text_only = false         # train the text branch alone
    normalization = "train_stats"  # fixed | imagenet | train_stats | batch (training.normalization)
    normalization_images = 1000    # train_stats/batch: at most this many training images

    [loss]
    name = "weighted_bce"

    [train]                   # training.trainer.TrainSettings
    epochs = 10

    [semisupervised]          # training.semisupervised (kind = "train" only)
    method = "mean_teacher"   # supervised | mean_teacher | pseudo_label
    labelled_fraction = 0.1   # hide the labels of 90% of the training patients

    [export]                  # kind = "train" only
    path = "runs/nih-thumbs/package"
    name = "cxrnode-nih-thumbs"
    version = "1.0.0"
    threshold = "youden"      # youden | sensitivity | fixed
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from training import datasets, label_pairs
from training.errors import TrainingError
from training.semisupervised import UNLABELLED, SemiSupervisedSettings
from training.trainer import TrainSettings

REPO = Path(__file__).resolve().parent.parent
RUN_KINDS = ("train", "crossval")
READERS = {
    "iu_xray": datasets.read_iu_xray,
    "r2gen": datasets.read_r2gen,
    "openi_xml": datasets.read_openi_xml,
    "mimic_cxr": datasets.read_mimic_cxr,
    "nih_chestxray14": datasets.read_nih_chestxray14,
    "nih_folders": datasets.read_nih_folders,
    "manifest": datasets.read_manifest,
    "rsna_pneumonia": datasets.read_rsna_pneumonia,
    "nih_labelled_folders": datasets.read_nih_labelled_folders,
    "kermany": datasets.read_kermany,
    "nih_iu_paired_by_label": label_pairs.read_nih_iu_paired_by_label,
}
MIXED = "mixed"
# [data] keys that are not reader arguments.
_DATA_KEYS = {"reader", "split", "fractions", "folds", "text_source", "leakage", "limit"}
# Keys of a [[data.sources]] entry that are not reader arguments.
_SOURCE_KEYS = {"reader", "population", "split", "keep"}
_PATH_KEYS = {
    "reports_csv",
    "projections_csv",
    "images_dir",
    "annotation_json",
    "xml_dir",
    "root",
    "labels_csv",
    "metadata_csv",
    "data_entry_csv",
    "manifest_csv",
}


def shared_data() -> Path:
    """The staged public data directory."""
    return Path(os.environ.get("CXRNODE_SHARED_DATA", REPO.parent / "shared" / "data"))


def expand(value: str) -> Path:
    """Expand ``${CXRNODE_SHARED_DATA}`` (and other environment variables) in a path."""
    mapping = {**os.environ, "CXRNODE_SHARED_DATA": str(shared_data())}
    try:
        return Path(Template(value).substitute(mapping)).expanduser()
    except KeyError as exc:
        raise TrainingError(f"path {value!r} names an unset variable {exc}") from exc


@dataclass
class RunConfig:
    """A parsed training config."""

    kind: str
    name: str
    output: Path
    data: dict[str, Any]
    model: dict[str, Any]
    loss: dict[str, Any]
    train: TrainSettings
    export: dict[str, Any] = field(default_factory=dict)
    variants: list[dict[str, Any]] = field(default_factory=list)
    source: Path | None = None
    semisupervised: SemiSupervisedSettings = field(default_factory=SemiSupervisedSettings)

    @property
    def text_source(self) -> str:
        return str(self.data.get("text_source", "report"))

    def variant(self, overrides: dict[str, Any]) -> RunConfig:
        """This config with a ``[[variants]]`` entry's tables merged over it."""
        merged = copy.deepcopy(self)
        for table in ("data", "model", "loss"):
            if table in overrides:
                getattr(merged, table).update(_deep_merge(getattr(merged, table), overrides[table]))
        if "train" in overrides:
            merged.train = TrainSettings.from_dict(
                {**_settings_dict(self.train), **overrides["train"]}
            )
        merged.name = f"{self.name}/{overrides['name']}"
        return merged

    def read_data(self) -> datasets.LabelledData:
        """Run the configured reader (or, for ``reader = "mixed"``, each source's, mixed)."""
        if self.data.get("reader") == MIXED:
            data = self._read_mixed()
        else:
            data = _read(self.data, _DATA_KEYS, "[data]")
        limit = int(self.data.get("limit", 0))
        if limit:
            data.samples = data.samples[:limit]
        return data

    def _read_mixed(self) -> datasets.LabelledData:
        sources = self.data.get("sources") or []
        if not sources or "vocabulary" not in self.data:
            raise TrainingError("[data] reader 'mixed' needs a vocabulary and [[data.sources]]")
        parts = []
        for number, source in enumerate(sources, start=1):
            where = f"[[data.sources]] #{number}"
            split = source.get("split", "patient")
            if split not in ("given", "patient", UNLABELLED):
                raise TrainingError(f"{where}: split must be 'given', 'patient' or 'unlabelled'")
            data = _read(source, _SOURCE_KEYS, where)
            if split == "patient":
                data.given_split = {}
            elif split == UNLABELLED:  # images for semi-supervised training; labels unused
                data.given_split = {s.key: UNLABELLED for s in data.samples}
            for split_name, count in dict(source.get("keep", {})).items():
                data.samples = _keep(data, split_name, int(count), self.train.seed)
            parts.append((str(source.get("population", data.name)), data))
        return datasets.mix(parts, str(self.data["vocabulary"]))


def _read(table: dict[str, Any], skip: set[str], where: str) -> datasets.LabelledData:
    reader = READERS.get(str(table.get("reader")))
    if reader is None:
        raise TrainingError(f"{where} reader must be one of {sorted(READERS)} (or {MIXED!r})")
    arguments: dict[str, Any] = {}
    for key, value in table.items():
        if key in skip or key == "sources":
            continue
        if key in _PATH_KEYS:
            value = expand(value)
        elif key == "image_dirs":
            value = [expand(v) for v in value]
        arguments[key] = value
    try:
        return reader(**arguments)
    except TypeError as exc:
        raise TrainingError(f"{where} does not fit reader {table['reader']}: {exc}") from exc


def _keep(data: datasets.LabelledData, split_name: str, count: int, seed: int) -> list:
    """The samples with at most ``count`` of one split (``"all"``: of the whole source) left,
    as whole patients drawn at random by the seed; the other splits untouched."""
    chosen = [
        s for s in data.samples if split_name == "all" or data.given_split.get(s.key) == split_name
    ]
    patients = sorted({s.patient_id for s in chosen})
    order = np.random.default_rng(seed).permutation(len(patients))
    kept, total = set(), 0
    by_patient: dict[str, int] = {}
    for s in chosen:
        by_patient[s.patient_id] = by_patient.get(s.patient_id, 0) + 1
    for index in order:
        patient = patients[index]
        if total + by_patient[patient] > count:
            continue
        kept.add(patient)
        total += by_patient[patient]
    chosen_ids = {id(s) for s in chosen}
    return [s for s in data.samples if id(s) not in chosen_ids or s.patient_id in kept]


def _settings_dict(settings: TrainSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        # A table of another "kind" (a token_ffn text encoder over an hf one) replaces it.
        same_kind = isinstance(merged.get(key), dict) and merged[key].get("kind") == (
            value.get("kind", merged[key].get("kind")) if isinstance(value, dict) else None
        )
        if isinstance(value, dict) and same_kind:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a training config file.

    Parameters
    ----------
    path : str or pathlib.Path
    overrides : dict, optional
        Tables merged over the file's (``{"train": {"epochs": 1}}``), e.g. from the command line.

    Raises
    ------
    TrainingError
        If the file is missing, not TOML, or a table is invalid.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrainingError(f"training config {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TrainingError(f"training config {path} is not valid TOML: {exc}") from exc
    raw = _deep_merge(raw, overrides or {})
    tables = {"run", "data", "model", "loss", "train", "export", "variants", "semisupervised"}
    unknown = set(raw) - tables
    if unknown:
        raise TrainingError(f"{path.name}: unknown tables {sorted(unknown)}")
    run = raw.get("run", {})
    kind = run.get("kind", "train")
    if kind not in RUN_KINDS:
        raise TrainingError(f"{path.name}: [run] kind must be one of {RUN_KINDS}")
    name = str(run.get("name") or path.stem)
    train = TrainSettings.from_dict(dict(raw.get("train", {})))
    semisupervised = SemiSupervisedSettings.from_dict(dict(raw.get("semisupervised", {})))
    sources = raw.get("data", {}).get("sources") or []
    unlabelled = any(source.get("split") == UNLABELLED for source in sources)
    if (semisupervised.active or unlabelled) and kind != "train":
        raise TrainingError(
            f"{path.name}: [semisupervised] and unlabelled sources need [run] kind = 'train'"
        )
    if semisupervised.uses_unlabelled and train.ema_decay <= 0:
        raise TrainingError(
            f"{path.name}: {semisupervised.method} learns from the EMA teacher: "
            "set [train] ema_decay, e.g. 0.99"
        )
    return RunConfig(
        kind=kind,
        name=name,
        output=Path(run.get("output", f"runs/{name}")),
        data=dict(raw.get("data", {})),
        model=dict(raw.get("model", {})),
        loss=dict(raw.get("loss", {"name": "bce"})),
        train=train,
        export=dict(raw.get("export", {})),
        variants=list(raw.get("variants", [])),
        source=path,
        semisupervised=semisupervised,
    )
