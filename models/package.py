"""The model package: a directory (or a tar archive of one) that fully describes a model.

Layout::

    model.safetensors   the state dict
    config.json         name, version, architecture, preprocessing, labels with codes and
                        thresholds, trained flag, disclaimer, weights sha256, provenance
    MODEL_CARD.md       what the model is, its data and measured metrics, its limits

Loading verifies everything it can before the model serves a single image: all files present,
config complete, weights hash as recorded, state dict matching the declared architecture.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.errors import ModelPackageError
from models.labels import Label
from models.network import ARCHITECTURE_DEFAULTS, CxrClassifier, build_model
from models.preprocess import PreprocessSpec

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "MODEL_CARD.md"
PACKAGE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
FORMAT_VERSION = 1
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class LabelConfig:
    """A label as a package declares it: the coded concept plus its operating threshold."""

    name: str
    coding_scheme: str
    code_value: str
    code_meaning: str
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"label {self.name!r}: threshold must be in [0, 1]")

    @classmethod
    def from_label(cls, label: Label, threshold: float = 0.5) -> LabelConfig:
        """Attach an operating threshold to a vocabulary label."""
        return cls(label.name, label.coding_scheme, label.code_value, label.code_meaning, threshold)

    @property
    def label(self) -> Label:
        """The vocabulary label, without the threshold."""
        return Label(self.name, self.code_value, self.coding_scheme, self.code_meaning)


@dataclass(frozen=True)
class ModelConfig:
    """Everything ``config.json`` says about a model.

    ``weights_sha256`` is filled in by :func:`save_package`; leave it empty when building a
    config for a model that has not been saved yet.
    """

    name: str
    version: str
    architecture: dict[str, Any]
    preprocessing: PreprocessSpec
    labels: tuple[LabelConfig, ...]
    trained: bool
    disclaimer: str
    training_data: str
    weights_sha256: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("model config needs a name and a version")
        if not self.labels:
            raise ValueError("model config needs at least one label")
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique: {names}")
        if not self.disclaimer.strip():
            raise ValueError("model config needs a disclaimer, shown in every output")

    @property
    def package_id(self) -> str:
        """Identity of the exact weights: ``name@version+sha256[:12]``."""
        return f"{self.name}@{self.version}+{self.weights_sha256[:12]}"

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Operating threshold of each label, in output order."""
        return tuple(label.threshold for label in self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as written to ``config.json``."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "architecture": dict(self.architecture),
            "preprocessing": self.preprocessing.to_dict(),
            "labels": [
                {
                    "name": label.name,
                    "coding_scheme": label.coding_scheme,
                    "code_value": label.code_value,
                    "code_meaning": label.code_meaning,
                    "threshold": label.threshold,
                }
                for label in self.labels
            ],
            "trained": self.trained,
            "disclaimer": self.disclaimer,
            "training_data": self.training_data,
            "weights_sha256": self.weights_sha256,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from the contents of ``config.json``.

        Raises
        ------
        ModelPackageError
            If a required key is missing, the format version is unknown, or a value is invalid.
        """
        required = (
            "name",
            "version",
            "architecture",
            "preprocessing",
            "labels",
            "trained",
            "disclaimer",
            "training_data",
            "weights_sha256",
            "created",
        )
        missing = [key for key in required if key not in data]
        if missing:
            raise ModelPackageError(f"{CONFIG_FILE} lacks required keys: {missing}")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ModelPackageError(
                f"{CONFIG_FILE} has format_version {data['format_version']!r}; "
                f"this version of cxrnode reads {FORMAT_VERSION}"
            )
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                architecture=dict(data["architecture"]),
                preprocessing=PreprocessSpec.from_dict(data["preprocessing"]),
                labels=tuple(LabelConfig(**label) for label in data["labels"]),
                trained=_strict_bool(data["trained"]),
                disclaimer=str(data["disclaimer"]),
                training_data=str(data["training_data"]),
                weights_sha256=str(data["weights_sha256"]),
                created=str(data["created"]),
            )
        except (TypeError, ValueError) as exc:
            raise ModelPackageError(f"{CONFIG_FILE} is invalid: {exc}") from exc


def _strict_bool(value: Any) -> bool:
    # "trained": "false" must not read as True: it decides what the disclaimer says.
    if not isinstance(value, bool):
        raise ValueError(f"'trained' must be true or false, not {value!r}")
    return value


@dataclass(frozen=True)
class LoadedPackage:
    """A verified package: its config and its model, in eval mode, on the CPU."""

    config: ModelConfig
    model: CxrClassifier
    source: Path


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_package(
    model: CxrClassifier, config: ModelConfig, path: str | Path, card_markdown: str
) -> ModelConfig:
    """Write a model package directory.

    Parameters
    ----------
    model : CxrClassifier
        The model whose state dict is saved.
    config : ModelConfig
        Its description; ``weights_sha256`` is computed here and need not be set.
    path : str or pathlib.Path
        Directory to create; it must not exist yet or be empty.
    card_markdown : str
        Contents of ``MODEL_CARD.md``.

    Returns
    -------
    ModelConfig
        The config as written: ``weights_sha256`` filled in, architecture with its defaults.

    Raises
    ------
    ValueError
        If the config does not describe the model or the card is empty.
    FileExistsError
        If ``path`` exists and is not an empty directory.
    """
    if {**ARCHITECTURE_DEFAULTS, **config.architecture} != model.architecture:
        raise ValueError(
            f"config architecture {config.architecture} does not describe the model "
            f"({model.architecture})"
        )
    if len(config.labels) != model.n_labels:
        raise ValueError(f"config has {len(config.labels)} labels, model {model.n_labels} outputs")
    if not card_markdown.strip():
        raise ValueError("a package needs a model card")
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty directory")
    target.mkdir(parents=True, exist_ok=True)

    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(target / WEIGHTS_FILE))
    written = replace(
        config,
        architecture=dict(model.architecture),
        weights_sha256=sha256_file(target / WEIGHTS_FILE),
    )
    (target / CONFIG_FILE).write_text(json.dumps(written.to_dict(), indent=2) + "\n")
    (target / CARD_FILE).write_text(card_markdown)
    return written


def load_package(path: str | Path) -> LoadedPackage:
    """Load and verify a model package directory or ``.tar``/``.tar.gz`` archive of one.

    Parameters
    ----------
    path : str or pathlib.Path
        The package directory or archive.

    Returns
    -------
    LoadedPackage
        The config and the model in eval mode on the CPU.

    Raises
    ------
    ModelPackageError
        If the path does not exist, a file is missing, the config is invalid, the weights do
        not match the recorded sha256, or the state dict does not match the architecture.
    """
    source = Path(path)
    if not source.exists():
        raise ModelPackageError(f"model package {source} does not exist")
    if source.is_dir():
        config, model = _load_directory(source)
        return LoadedPackage(config, model, source)
    if source.name.endswith(ARCHIVE_SUFFIXES):
        # The model lives in memory once loaded, so the extracted files can go right away.
        with tempfile.TemporaryDirectory(prefix="cxrnode-package-") as scratch:
            config, model = _load_directory(_extract(source, Path(scratch)))
        return LoadedPackage(config, model, source)
    raise ModelPackageError(
        f"model package {source} is neither a directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive"
    )


def _extract(archive: Path, scratch: Path) -> Path:
    if not hasattr(tarfile, "data_filter"):
        raise ModelPackageError("loading an archived package needs Python >= 3.11.4; unpack it")
    try:
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths, links out of the tree and devices.
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ModelPackageError(f"cannot extract model package archive {archive}: {exc}") from exc
    if (scratch / CONFIG_FILE).exists():
        return scratch
    # An archive of the directory itself holds one top-level folder.
    children = [child for child in scratch.iterdir() if child.is_dir()]
    if len(children) == 1 and (children[0] / CONFIG_FILE).exists():
        return children[0]
    raise ModelPackageError(f"archive {archive} holds no {CONFIG_FILE} at its top level")


def _load_directory(directory: Path) -> tuple[ModelConfig, CxrClassifier]:
    missing = [name for name in PACKAGE_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelPackageError(f"model package {directory} is missing {', '.join(missing)}")
    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"{directory / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelPackageError(f"{directory / CONFIG_FILE} must hold a JSON object")
    config = ModelConfig.from_dict(raw)

    actual = sha256_file(directory / WEIGHTS_FILE)
    if actual != config.weights_sha256:
        raise ModelPackageError(
            f"{directory / WEIGHTS_FILE} does not match its recorded sha256: config says "
            f"{config.weights_sha256 or '(none)'}, file is {actual}; the weights were altered "
            "or belong to another package"
        )
    try:
        model = build_model(config.architecture, len(config.labels))
    except ValueError as exc:
        raise ModelPackageError(f"{CONFIG_FILE} architecture is invalid: {exc}") from exc
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise ModelPackageError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from exc
    _check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return config, model.eval()


def _check_state_dict(model: CxrClassifier, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with wrong shape (e.g. {'; '.join(wrong_shape[:3])})")
    if problems:
        raise ModelPackageError(
            f"weights do not match architecture {model.architecture} with {model.n_labels} "
            f"labels: tensors {', '.join(problems)}"
        )
