"""The model package: a directory (or a tar archive of one) that fully describes a model.

Layout::

    model.safetensors   the state dict (without a frozen external text encoder's weights)
    config.json         name, version, architecture (text encoder included), preprocessing of
                        images and of report text, labels with codes and thresholds, trained
                        flag, disclaimer, weights sha256, provenance
    MODEL_CARD.md       what the model is, its data and measured metrics, its limits
    vocabulary.json     only with a ``token_ffn`` text encoder: its word list
    text_encoder/       only with a trainable ``hf`` text encoder: its config and tokenizer

A frozen ``hf`` text encoder (``"trainable": false``) stays where it is installed: the config
records its location (``"minilm"`` or a path) and the sha256 of its weights, and loading finds
it there and checks that sha256. A trainable one is part of the model and travels inside.

Loading verifies everything it can before the model serves a single image: all files present,
config complete, every recorded sha256 as recorded, state dict matching the declared
architecture.
"""

from __future__ import annotations

import copy
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

from models.encoders.text import (
    HfTextEncoder,
    TokenFfnTextEncoder,
    WordVocabulary,
    hf_weights_digest,
    resolve_hf_source,
    sha256_file,
)
from models.errors import ModelPackageError
from models.labels import VOCABULARIES, Label
from models.network import CxrClassifier, build_model, normalize_architecture
from models.preprocess import NORMALIZATIONS, PreprocessSpec
from models.targets import UncertainPolicy
from models.text import TextCleaning

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "VOCABULARY_FILE",
    "WEIGHTS_FILE",
    "LabelConfig",
    "LoadedPackage",
    "ModelConfig",
    "load_package",
    "save_package",
    "sha256_file",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "MODEL_CARD.md"
VOCABULARY_FILE = "vocabulary.json"
TEXT_ENCODER_DIR = "text_encoder"
PACKAGE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
FORMAT_VERSION = 2
# Explanations a package may ask the node to add to its captures (``explanation_captures``):
# each costs many forward passes per finding, so none is drawn unless the package asks.
EXPLANATION_CAPTURES = ("integrated_gradients",)
# Format 1: image-only models, before text encoders ("text_dim": 0, backbone under "encoder.").
READABLE_FORMATS = (1, 2)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# State-dict prefix of an hf text encoder's own weights.
_HF_PREFIX = "text_encoder.model."


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
    config for a model that has not been saved yet. ``text_cleaning`` is how report text is
    prepared for the model, in training and serving alike. ``label_vocabulary`` names the
    :data:`models.labels.VOCABULARIES` entry the labels come from ("" for a custom set), and
    ``uncertain_policy`` records how uncertain labels were trained (CheXpert/MIMIC-CXR).
    ``normalization`` names how training chose the preprocessing's mean and std (one of
    :data:`models.preprocess.NORMALIZATIONS`; "" for packages that do not say, as imported
    and older ones).
    ``explanation_captures`` names the explanations besides Grad-CAM the node draws into a
    capture series of their own (:data:`EXPLANATION_CAPTURES`; none by default).
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
    text_cleaning: TextCleaning = field(default_factory=TextCleaning)
    label_vocabulary: str = ""
    uncertain_policy: str | None = None
    normalization: str = ""
    explanation_captures: tuple[str, ...] = ()

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
        if self.label_vocabulary:
            vocabulary = VOCABULARIES.get(self.label_vocabulary)
            if vocabulary is None:
                raise ValueError(
                    f"unknown label vocabulary {self.label_vocabulary!r}; "
                    f"known: {sorted(VOCABULARIES)}"
                )
            if [label.name for label in vocabulary] != names:
                raise ValueError(f"labels are not those of vocabulary {self.label_vocabulary!r}")
        if self.uncertain_policy is not None:
            UncertainPolicy(self.uncertain_policy)  # raises ValueError naming the bad value
        if self.normalization and self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, not {self.normalization!r}"
            )
        unknown = sorted(set(self.explanation_captures) - set(EXPLANATION_CAPTURES))
        if unknown:
            raise ValueError(
                f"unknown explanation_captures {unknown}; known: {list(EXPLANATION_CAPTURES)}"
            )

    @property
    def package_id(self) -> str:
        """Identity of the exact weights: ``name@version+sha256[:12]``."""
        return f"{self.name}@{self.version}+{self.weights_sha256[:12]}"

    @property
    def uses_text(self) -> bool:
        """Whether the model reads report text besides the images."""
        entry = self.architecture.get("text_encoder") or {"kind": "none"}
        return entry.get("kind", "none") != "none"

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Operating threshold of each label, in output order."""
        return tuple(label.threshold for label in self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as written to ``config.json``.

        ``normalization`` is a top-level key, not a preprocessing one, and only written when
        known: serving reads the mean and std alone, so a node that predates the name serves
        such a package correctly and ignores it, where an unknown preprocessing key would make
        it refuse the package.
        """
        data: dict[str, Any] = {
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
            "text_cleaning": self.text_cleaning.to_dict(),
            "label_vocabulary": self.label_vocabulary,
            "uncertain_policy": self.uncertain_policy,
            # Written only when set, so a package without it reads as it always did.
            **(
                {"explanation_captures": list(self.explanation_captures)}
                if self.explanation_captures
                else {}
            ),
        }
        if self.normalization:
            data["normalization"] = self.normalization
        return data

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
        if data.get("format_version", FORMAT_VERSION) not in READABLE_FORMATS:
            raise ModelPackageError(
                f"{CONFIG_FILE} has format_version {data['format_version']!r}; "
                f"this version of cxrnode reads {' and '.join(map(str, READABLE_FORMATS))}"
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
                text_cleaning=TextCleaning.from_dict(data.get("text_cleaning") or {}),
                label_vocabulary=str(data.get("label_vocabulary") or ""),
                uncertain_policy=data.get("uncertain_policy"),
                normalization=str(data.get("normalization") or ""),
                explanation_captures=_captures(data.get("explanation_captures") or []),
            )
        except (TypeError, ValueError) as exc:
            raise ModelPackageError(f"{CONFIG_FILE} is invalid: {exc}") from exc


def _captures(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'explanation_captures' must be a list of names, not {value!r}")
    return tuple(value)


def _strict_bool(value: Any) -> bool:
    # "trained": "false" must not read as True: it decides what the disclaimer says.
    if not isinstance(value, bool):
        raise ValueError(f"'trained' must be true or false, not {value!r}")
    return value


@dataclass(frozen=True)
class LoadedPackage:
    """A verified package: its config and its model, in eval mode, on the CPU, and its model
    card (the Markdown of ``MODEL_CARD.md``)."""

    config: ModelConfig
    model: CxrClassifier
    source: Path
    card: str = ""


def save_package(
    model: CxrClassifier, config: ModelConfig, path: str | Path, card_markdown: str
) -> ModelConfig:
    """Write a model package directory.

    Parameters
    ----------
    model : CxrClassifier
        The model whose state dict is saved (a frozen external text encoder's weights are
        left out: the config records where they are and their sha256).
    config : ModelConfig
        Its description; ``weights_sha256`` is computed here and need not be set, and the
        architecture may be partial (defaults and recorded values are filled in).
    path : str or pathlib.Path
        Directory to create; it must not exist yet or be empty.
    card_markdown : str
        Contents of ``MODEL_CARD.md``.

    Returns
    -------
    ModelConfig
        The config as written: ``weights_sha256`` filled in, the full architecture.

    Raises
    ------
    ValueError
        If the config does not describe the model or the card is empty.
    FileExistsError
        If ``path`` exists and is not an empty directory.
    """
    mismatch = _architecture_mismatch(config.architecture, model.architecture)
    if mismatch:
        raise ValueError(
            f"config architecture {config.architecture} does not describe the model "
            f"({model.architecture}): {mismatch}"
        )
    if len(config.labels) != model.n_labels:
        raise ValueError(f"config has {len(config.labels)} labels, model {model.n_labels} outputs")
    if not card_markdown.strip():
        raise ValueError("a package needs a model card")
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty directory")
    target.mkdir(parents=True, exist_ok=True)

    architecture = copy.deepcopy(model.architecture)
    text_entry = architecture["text_encoder"]
    encoder = model.text_encoder
    if isinstance(encoder, TokenFfnTextEncoder):
        (target / VOCABULARY_FILE).write_text(encoder.vocabulary.to_json())
        text_entry["vocabulary_sha256"] = sha256_file(target / VOCABULARY_FILE)
    elif isinstance(encoder, HfTextEncoder) and encoder.trainable:
        text_entry["files"] = encoder.save_structure(target / TEXT_ENCODER_DIR)

    state = {
        key: value.detach().cpu().contiguous().clone()
        for key, value in model.state_dict().items()
        if not _is_external(model, key)
    }
    save_file(state, str(target / WEIGHTS_FILE))
    written = replace(
        config,
        architecture=architecture,
        weights_sha256=sha256_file(target / WEIGHTS_FILE),
    )
    (target / CONFIG_FILE).write_text(json.dumps(written.to_dict(), indent=2) + "\n")
    (target / CARD_FILE).write_text(card_markdown)
    return written


def _architecture_mismatch(given: dict[str, Any], actual: dict[str, Any]) -> str:
    """Return what of ``given`` (partial, as a user writes it) ``actual`` contradicts, or ""."""
    try:
        expected = normalize_architecture(given)
    except ValueError as exc:
        return str(exc)
    for key, value in expected.items():
        if key == "text_encoder":
            for text_key, text_value in value.items():
                if actual["text_encoder"].get(text_key) != text_value:
                    return f"text_encoder.{text_key}"
        elif actual.get(key) != value:
            return key
    return ""


def _is_external(model: CxrClassifier, key: str) -> bool:
    encoder = model.text_encoder
    return (
        isinstance(encoder, HfTextEncoder) and not encoder.trainable and key.startswith(_HF_PREFIX)
    )


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
        If the path does not exist, a file is missing, the config is invalid, the weights (or
        the vocabulary, or a packaged text encoder's files) do not match their recorded
        sha256, a frozen text encoder the package names is not installed here or has other
        weights than the package was built with, or the state dict does not match the
        architecture.
    """
    source = Path(path)
    if not source.exists():
        raise ModelPackageError(f"model package {source} does not exist")
    if source.is_dir():
        config, model = _load_directory(source)
        return LoadedPackage(config, model, source, _card(source))
    if source.name.endswith(ARCHIVE_SUFFIXES):
        # The model lives in memory once loaded, so the extracted files can go right away.
        with tempfile.TemporaryDirectory(prefix="cxrnode-package-") as scratch:
            directory = _extract(source, Path(scratch))
            config, model = _load_directory(directory)
            card = _card(directory)
        return LoadedPackage(config, model, source, card)
    raise ModelPackageError(
        f"model package {source} is neither a directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive"
    )


def _card(directory: Path) -> str:
    return (directory / CARD_FILE).read_text(encoding="utf-8", errors="replace")


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
        architecture = normalize_architecture(config.architecture)
    except ValueError as exc:
        raise ModelPackageError(f"{CONFIG_FILE} architecture is invalid: {exc}") from exc
    text_entry = architecture["text_encoder"]
    vocabulary = _read_vocabulary(directory, text_entry)
    structure = _check_text_encoder(directory, text_entry)
    try:
        model = build_model(
            architecture,
            len(config.labels),
            in_channels=config.preprocessing.channels,
            vocabulary=vocabulary,
            text_structure_from=structure,
        )
    except ValueError as exc:
        raise ModelPackageError(f"{CONFIG_FILE} architecture is invalid: {exc}") from exc
    except OSError as exc:
        raise ModelPackageError(f"cannot load the text encoder of {directory}: {exc}") from exc
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise ModelPackageError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from exc
    if raw.get("format_version", FORMAT_VERSION) == 1:
        state = {_format1_key(key): value for key, value in state.items()}
    _check_state_dict(model, state)
    model.load_state_dict(state, strict=False)
    return config, model.eval()


def _format1_key(key: str) -> str:
    return "image_encoder.body." + key[len("encoder.") :] if key.startswith("encoder.") else key


def _read_vocabulary(directory: Path, entry: dict[str, Any]) -> WordVocabulary | None:
    if entry["kind"] != "token_ffn":
        return None
    path = directory / VOCABULARY_FILE
    if not path.is_file():
        raise ModelPackageError(f"model package {directory} is missing {VOCABULARY_FILE}")
    recorded = entry.get("vocabulary_sha256", "")
    if sha256_file(path) != recorded:
        raise ModelPackageError(
            f"{path} does not match its recorded sha256 ({recorded or 'none recorded'})"
        )
    try:
        return WordVocabulary.from_json(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"{path} is not a word vocabulary: {exc}") from exc


def _check_text_encoder(directory: Path, entry: dict[str, Any]) -> Path | None:
    """Verify an hf text encoder's files; return the package's copy of its structure, if any."""
    if entry["kind"] != "hf":
        return None
    if entry["trainable"]:
        files = entry.get("files") or {}
        folder = directory / TEXT_ENCODER_DIR
        if not files:
            raise ModelPackageError(f"{CONFIG_FILE} lists no files of its trainable text encoder")
        for name, recorded in sorted(files.items()):
            path = folder / name
            if not path.is_file():
                raise ModelPackageError(
                    f"model package {directory} is missing {TEXT_ENCODER_DIR}/{name}"
                )
            if sha256_file(path) != recorded:
                raise ModelPackageError(f"{path} does not match its recorded sha256")
        return folder
    source = entry["path"]
    try:
        location = resolve_hf_source(source)
        actual = hf_weights_digest(location)
    except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
        raise ModelPackageError(
            f"the package's frozen text encoder {source!r} is not available here: {exc}"
        ) from exc
    recorded = entry.get("weights_sha256", "")
    if actual != recorded:
        raise ModelPackageError(
            f"text encoder {source!r} at {location} does not match the package: its weights' "
            f"sha256 is {actual}, the package was built with {recorded or '(none recorded)'}; "
            "install the encoder the package names"
        )
    return None


def _check_state_dict(model: CxrClassifier, state: dict[str, torch.Tensor]) -> None:
    expected = {k: v for k, v in model.state_dict().items() if not _is_external(model, k)}
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
