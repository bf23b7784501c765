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
    split = "given"           # given | patient (with fractions)
    text_source = "report"    # report | indication | none

    [model]
    preset = "seed-002"       # or an [model.architecture] table (merged over the preset's)
    image_size = 64
    text_only = false         # train the text branch alone

    [loss]
    name = "weighted_bce"

    [train]                   # training.trainer.TrainSettings
    epochs = 10

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

from training import datasets
from training.errors import TrainingError
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
}
# [data] keys that are not reader arguments.
_DATA_KEYS = {"reader", "split", "fractions", "folds", "text_source", "leakage", "limit"}
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
        """Run the configured reader."""
        reader = READERS.get(str(self.data.get("reader")))
        if reader is None:
            raise TrainingError(f"[data] reader must be one of {sorted(READERS)}")
        arguments: dict[str, Any] = {}
        for key, value in self.data.items():
            if key in _DATA_KEYS:
                continue
            if key in _PATH_KEYS:
                value = expand(value)
            elif key == "image_dirs":
                value = [expand(v) for v in value]
            arguments[key] = value
        try:
            data = reader(**arguments)
        except TypeError as exc:
            raise TrainingError(f"[data] does not fit reader {self.data['reader']}: {exc}") from exc
        limit = int(self.data.get("limit", 0))
        if limit:
            data.samples = data.samples[:limit]
        return data


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
    unknown = set(raw) - {"run", "data", "model", "loss", "train", "export", "variants"}
    if unknown:
        raise TrainingError(f"{path.name}: unknown tables {sorted(unknown)}")
    run = raw.get("run", {})
    kind = run.get("kind", "train")
    if kind not in RUN_KINDS:
        raise TrainingError(f"{path.name}: [run] kind must be one of {RUN_KINDS}")
    name = str(run.get("name") or path.stem)
    return RunConfig(
        kind=kind,
        name=name,
        output=Path(run.get("output", f"runs/{name}")),
        data=dict(raw.get("data", {})),
        model=dict(raw.get("model", {})),
        loss=dict(raw.get("loss", {"name": "bce"})),
        train=TrainSettings.from_dict(dict(raw.get("train", {}))),
        export=dict(raw.get("export", {})),
        variants=list(raw.get("variants", [])),
        source=path,
    )
