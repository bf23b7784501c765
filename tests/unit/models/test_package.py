"""Model packages: save/load round trip, verification failures, archives, the default package."""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.default import (
    REFERENCE_DISCLAIMER,
    REFERENCE_NAME,
    build_reference_package,
    ensure_default_package,
    reference_config,
)
from models.errors import ModelPackageError
from models.labels import NIH_CHESTXRAY14
from models.network import build_model
from models.package import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    load_package,
    save_package,
    sha256_file,
)


def _copy(package_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package_dir, tmp_path / "copy"))


def _logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


def test_saved_package_loads_to_a_model_with_identical_outputs(tmp_path: Path):
    torch.manual_seed(1)
    config = replace(reference_config(), name="round-trip", trained=True, training_data="none")
    model = build_model(config.architecture, len(config.labels)).eval()
    written = save_package(model, config, tmp_path / "pkg", "# card\n")

    loaded = load_package(tmp_path / "pkg")
    images = torch.rand(2, 3, 224, 224)
    torch.testing.assert_close(_logits(loaded.model, images), _logits(model, images))
    assert loaded.config == written
    assert written.weights_sha256 == sha256_file(tmp_path / "pkg" / WEIGHTS_FILE)
    assert not loaded.model.training


def test_config_json_describes_the_model_completely(reference_package_dir: Path):
    config = json.loads((reference_package_dir / CONFIG_FILE).read_text())
    assert config["architecture"]["image_encoder"] == "resnet18"
    assert config["preprocessing"]["image_size"] == 224
    assert config["trained"] is False and config["disclaimer"] == REFERENCE_DISCLAIMER
    assert [label["name"] for label in config["labels"]] == [
        label.name for label in NIH_CHESTXRAY14
    ]
    assert {"coding_scheme", "code_value", "code_meaning", "threshold"} <= set(config["labels"][0])
    assert len(config["weights_sha256"]) == 64 and config["created"]


def test_package_id_names_the_exact_weights(reference_package_dir: Path):
    config = load_package(reference_package_dir).config
    assert config.package_id == f"{REFERENCE_NAME}@0.1.0+{config.weights_sha256[:12]}"


def test_tampered_weights_are_refused_naming_the_sha256(reference_package_dir, tmp_path):
    package = _copy(reference_package_dir, tmp_path)
    weights = bytearray((package / WEIGHTS_FILE).read_bytes())
    weights[-100] ^= 0xFF
    (package / WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(ModelPackageError, match="sha256"):
        load_package(package)


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])
def test_a_missing_file_is_named(reference_package_dir: Path, tmp_path: Path, missing: str):
    package = _copy(reference_package_dir, tmp_path)
    (package / missing).unlink()
    with pytest.raises(ModelPackageError, match=f"missing {missing}"):
        load_package(package)


def test_a_missing_config_key_is_named(reference_package_dir: Path, tmp_path: Path):
    package = _copy(reference_package_dir, tmp_path)
    config = json.loads((package / CONFIG_FILE).read_text())
    del config["disclaimer"]
    (package / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelPackageError, match="disclaimer"):
        load_package(package)


def test_trained_flag_must_be_a_real_boolean(reference_package_dir: Path, tmp_path: Path):
    package = _copy(reference_package_dir, tmp_path)
    config = json.loads((package / CONFIG_FILE).read_text())
    config["trained"] = "false"
    (package / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelPackageError, match="trained"):
        load_package(package)


def test_weights_of_another_architecture_are_refused(reference_package_dir, tmp_path):
    package = _copy(reference_package_dir, tmp_path)
    config = json.loads((package / CONFIG_FILE).read_text())
    config["architecture"]["hidden_dim"] = 128  # a consistent hash, but the wrong shapes
    (package / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelPackageError, match="do not match architecture.*wrong shape"):
        load_package(package)


def test_labels_that_do_not_match_the_outputs_are_refused(reference_package_dir, tmp_path):
    package = _copy(reference_package_dir, tmp_path)
    config = json.loads((package / CONFIG_FILE).read_text())
    config["labels"] = config["labels"][:3]
    (package / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelPackageError, match="3 labels"):
        load_package(package)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_an_archive_of_the_package_directory_loads(reference_package_dir, tmp_path, suffix):
    archive = tmp_path / f"reference{suffix}"
    with tarfile.open(archive, "w:gz" if suffix.endswith("gz") else "w") as tar:
        tar.add(reference_package_dir, arcname="reference")
    loaded = load_package(archive)
    assert loaded.config == load_package(reference_package_dir).config
    assert loaded.source == archive


def test_a_path_that_is_no_package_is_refused(tmp_path: Path):
    with pytest.raises(ModelPackageError, match="does not exist"):
        load_package(tmp_path / "nowhere")
    (tmp_path / "model.zip").write_bytes(b"PK")
    with pytest.raises(ModelPackageError, match="neither a directory"):
        load_package(tmp_path / "model.zip")


def test_save_refuses_a_config_that_does_not_describe_the_model(tmp_path: Path):
    config = reference_config()
    model = build_model({**config.architecture, "hidden_dim": 0}, len(config.labels))
    with pytest.raises(ValueError, match="does not describe"):
        save_package(model, config, tmp_path / "pkg", "# card")


def test_save_never_overwrites_an_existing_package(reference_package_dir: Path):
    config = reference_config()
    model = build_model(config.architecture, len(config.labels))
    with pytest.raises(FileExistsError):
        save_package(model, config, reference_package_dir, "# card")


def test_model_config_round_trips_through_a_dict():
    config = replace(reference_config(), weights_sha256="ab" * 32)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_reference_package_is_deterministic(reference_package_dir: Path, tmp_path: Path):
    rebuilt = build_reference_package(tmp_path / "again")
    assert sha256_file(rebuilt / WEIGHTS_FILE) == sha256_file(reference_package_dir / WEIGHTS_FILE)
    assert (rebuilt / CONFIG_FILE).read_text() == (reference_package_dir / CONFIG_FILE).read_text()


def test_reference_package_says_plainly_it_is_untrained(reference_package_dir: Path):
    loaded = load_package(reference_package_dir)
    assert loaded.config.trained is False
    assert loaded.config.disclaimer.startswith("NOT A TRAINED CLINICAL MODEL")
    card = (reference_package_dir / CARD_FILE).read_text()
    assert REFERENCE_DISCLAIMER in card and "never trained" in card


def test_reference_build_leaves_the_global_random_state_alone(tmp_path: Path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_reference_package(tmp_path / "pkg")
    torch.testing.assert_close(torch.rand(3), expected)


def test_default_package_is_built_once_and_atomically(tmp_path: Path):
    first = ensure_default_package(tmp_path)
    assert first == tmp_path / "models" / REFERENCE_NAME
    stamp = (first / WEIGHTS_FILE).stat().st_mtime_ns
    assert ensure_default_package(tmp_path) == first
    assert (first / WEIGHTS_FILE).stat().st_mtime_ns == stamp
    assert [child.name for child in (tmp_path / "models").iterdir()] == [REFERENCE_NAME]
    load_package(first)


def test_a_half_written_default_package_is_reported_not_loaded(tmp_path: Path):
    leftover = tmp_path / "models" / REFERENCE_NAME
    leftover.mkdir(parents=True)
    (leftover / WEIGHTS_FILE).write_bytes(b"partial")
    with pytest.raises(ModelPackageError, match="not a complete model package"):
        ensure_default_package(tmp_path)


def test_save_records_the_full_architecture_from_a_partial_description(tmp_path: Path):
    config = replace(reference_config(), architecture={"image_encoder": "resnet18"})
    model = build_model(config.architecture, len(config.labels))
    written = save_package(model, config, tmp_path / "pkg", "# card")
    assert written.architecture == model.architecture
    assert load_package(tmp_path / "pkg").config.architecture["hidden_dim"] == 256
