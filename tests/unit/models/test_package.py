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
    REFERENCE_VERSION,
    build_reference_package,
    ensure_reference_package,
    reference_config,
)
from models.encoders.text import WordVocabulary
from models.errors import ModelPackageError
from models.labels import NIH_CHESTXRAY14
from models.network import build_model
from models.package import (
    CARD_FILE,
    CONFIG_FILE,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    load_package,
    save_package,
    sha256_file,
)
from models.preprocess import PreprocessSpec
from models.presets import PRESETS
from models.text import TextCleaning


def _copy(package_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package_dir, tmp_path / "copy"))


def _logits(model: torch.nn.Module, images: torch.Tensor, text=None) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images, text)


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
    assert config["format_version"] == 2
    assert config["architecture"]["image_encoder"] == "resnet18"
    text_encoder = config["architecture"]["text_encoder"]
    assert text_encoder["kind"] == "hf" and text_encoder["path"] == "minilm"
    assert text_encoder["trainable"] is False and len(text_encoder["weights_sha256"]) == 64
    assert config["architecture"]["fusion"] == "concat"
    assert config["text_cleaning"]["sections"] == ["FINDINGS", "IMPRESSION"]
    assert config["label_vocabulary"] == "nih-chestxray14"
    assert config["preprocessing"]["image_size"] == 224
    assert config["trained"] is False and config["disclaimer"] == REFERENCE_DISCLAIMER
    assert [label["name"] for label in config["labels"]] == [
        label.name for label in NIH_CHESTXRAY14
    ]
    assert {"coding_scheme", "code_value", "code_meaning", "threshold"} <= set(config["labels"][0])
    assert len(config["weights_sha256"]) == 64 and config["created"]


def test_package_id_names_the_exact_weights(reference_package_dir: Path):
    config = load_package(reference_package_dir).config
    assert config.package_id == f"{REFERENCE_NAME}@0.2.0+{config.weights_sha256[:12]}"
    assert config.uses_text


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
    config["label_vocabulary"] = ""  # a custom label set, so that only the outputs disagree
    (package / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelPackageError, match="3 labels"):
        load_package(package)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_an_archive_of_the_package_directory_loads(reference_package_dir, tmp_path, suffix):
    archive = tmp_path / f"reference{suffix}"
    options = {"compresslevel": 1} if suffix.endswith("gz") else {}
    with tarfile.open(archive, "w:gz" if suffix.endswith("gz") else "w", **options) as tar:
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
    for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):
        assert (rebuilt / name).read_bytes() == (reference_package_dir / name).read_bytes()


def test_reference_package_keeps_the_frozen_minilm_out_of_its_weights(reference_package_dir):
    from safetensors import safe_open

    with safe_open(str(reference_package_dir / WEIGHTS_FILE), "pt") as weights:
        keys = list(weights.keys())
    assert "missing_text" in keys and not any(k.startswith("text_encoder.") for k in keys)
    assert (reference_package_dir / WEIGHTS_FILE).stat().st_size < 50_000_000


def test_reference_package_builds_fast(tmp_path: Path, reference_package_dir: Path):
    import time

    start = time.perf_counter()
    build_reference_package(tmp_path / "again")
    assert time.perf_counter() - start < 5.0


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
    first = ensure_reference_package(tmp_path)
    assert first == tmp_path / "models" / REFERENCE_NAME
    stamp = (first / WEIGHTS_FILE).stat().st_mtime_ns
    assert ensure_reference_package(tmp_path) == first
    assert (first / WEIGHTS_FILE).stat().st_mtime_ns == stamp
    assert [child.name for child in (tmp_path / "models").iterdir()] == [REFERENCE_NAME]
    load_package(first)


def test_an_outdated_default_package_is_replaced(tmp_path: Path, reference_package_dir: Path):
    target = tmp_path / "models" / REFERENCE_NAME
    shutil.copytree(reference_package_dir, target)
    config = json.loads((target / CONFIG_FILE).read_text())
    config["version"] = "0.1.0"
    (target / CONFIG_FILE).write_text(json.dumps(config))
    assert ensure_reference_package(tmp_path) == target
    assert load_package(target).config.version == REFERENCE_VERSION
    assert [child.name for child in (tmp_path / "models").iterdir()] == [REFERENCE_NAME]


def test_a_half_written_default_package_is_reported_not_loaded(tmp_path: Path):
    leftover = tmp_path / "models" / REFERENCE_NAME
    leftover.mkdir(parents=True)
    (leftover / WEIGHTS_FILE).write_bytes(b"partial")
    with pytest.raises(ModelPackageError, match="not a complete model package"):
        ensure_reference_package(tmp_path)


def test_save_records_the_full_architecture_from_a_partial_description(tmp_path: Path):
    config = replace(reference_config(), architecture={"image_encoder": "resnet18"})
    model = build_model(config.architecture, len(config.labels))
    written = save_package(model, config, tmp_path / "pkg", "# card")
    assert written.architecture == model.architecture
    loaded = load_package(tmp_path / "pkg").config
    assert loaded.architecture["hidden_dim"] == 256 and not loaded.uses_text


# --- every seed architecture as a package ---------------------------------------------------

SMALL = 64  # image side for these tests; the presets' own sizes are 224 and 320


def _preset_model(key: str, tiny_bert_dir: Path):
    preset = PRESETS[key]
    config = preset.model_config(
        key,
        "1.0.0",
        trained=False,
        disclaimer="test model",
        training_data="none",
        text_encoder_path=str(tiny_bert_dir),
        image_size=SMALL,
    )
    vocabulary = WordVocabulary.fit(["clear lungs", "small effusion", "cardiomegaly"], 50)
    torch.manual_seed(0)
    model = build_model(
        config.architecture,
        len(config.labels),
        in_channels=config.preprocessing.channels,
        vocabulary=vocabulary,
    )
    return config, model.eval()


@pytest.mark.parametrize("key", sorted(PRESETS))
def test_every_seed_preset_saves_and_loads_to_identical_outputs(key, tiny_bert_dir, tmp_path):
    config, model = _preset_model(key, tiny_bert_dir)
    written = save_package(model, config, tmp_path / key, f"# {key}\n")
    loaded = load_package(tmp_path / key)
    assert loaded.config == written and loaded.config.label_vocabulary
    images = torch.rand(2, config.preprocessing.channels, SMALL, SMALL)
    texts = model.tokenize(["clear lungs", None])
    torch.testing.assert_close(_logits(loaded.model, images, texts), _logits(model, images, texts))
    torch.testing.assert_close(_logits(loaded.model, images), _logits(model, images))
    assert loaded.config.uses_text == (PRESETS[key].architecture["text_encoder"]["kind"] != "none")


def test_presets_with_a_bert_encoder_need_its_directory():
    with pytest.raises(ValueError, match="biobert"):
        PRESETS["seed-000"].resolved_architecture()


def _frozen_bert_package(tiny_bert_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    encoder_dir = Path(shutil.copytree(tiny_bert_dir, tmp_path / "bert"))
    config, model = _preset_model("seed-000", encoder_dir)
    save_package(model, config, tmp_path / "pkg", "# card\n")
    return tmp_path / "pkg", encoder_dir


def test_a_frozen_encoder_that_is_not_installed_is_a_clear_error(tiny_bert_dir, tmp_path):
    package, encoder_dir = _frozen_bert_package(tiny_bert_dir, tmp_path)
    shutil.rmtree(encoder_dir)
    with pytest.raises(ModelPackageError, match="text encoder .* is not available here"):
        load_package(package)


def test_a_frozen_encoder_with_other_weights_is_refused_naming_the_sha256(tiny_bert_dir, tmp_path):
    package, encoder_dir = _frozen_bert_package(tiny_bert_dir, tmp_path)
    weights = bytearray((encoder_dir / "model.safetensors").read_bytes())
    weights[-10] ^= 0xFF
    (encoder_dir / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ModelPackageError, match="sha256"):
        load_package(package)


def test_a_trainable_encoder_travels_inside_the_package(tiny_bert_dir, tmp_path):
    encoder_dir = Path(shutil.copytree(tiny_bert_dir, tmp_path / "bert"))
    config, _ = _preset_model("seed-001", encoder_dir)
    architecture = {**config.architecture}
    architecture["text_encoder"] = {**architecture["text_encoder"], "trainable": True}
    config = replace(config, architecture=architecture)
    model = build_model(architecture, len(config.labels)).eval()
    written = save_package(model, config, tmp_path / "pkg", "# card\n")
    assert written.architecture["text_encoder"]["files"]
    shutil.rmtree(encoder_dir)  # the package no longer needs it

    loaded = load_package(tmp_path / "pkg")
    images, texts = torch.rand(2, 3, SMALL, SMALL), model.tokenize(["clear lungs", "effusion"])
    torch.testing.assert_close(_logits(loaded.model, images, texts), _logits(model, images, texts))
    (tmp_path / "pkg" / "text_encoder" / "config.json").unlink()
    with pytest.raises(ModelPackageError, match="missing text_encoder/config.json"):
        load_package(tmp_path / "pkg")


def test_a_word_vocabulary_is_verified_like_the_weights(tiny_bert_dir, tmp_path):
    config, model = _preset_model("seed-002", tiny_bert_dir)
    save_package(model, config, tmp_path / "pkg", "# card\n")
    assert (
        load_package(tmp_path / "pkg").model.text_encoder.vocabulary
        == model.text_encoder.vocabulary
    )
    (tmp_path / "pkg" / VOCABULARY_FILE).write_text(WordVocabulary(["other"]).to_json())
    with pytest.raises(ModelPackageError, match="vocabulary.json does not match"):
        load_package(tmp_path / "pkg")
    (tmp_path / "pkg" / VOCABULARY_FILE).unlink()
    with pytest.raises(ModelPackageError, match="missing vocabulary.json"):
        load_package(tmp_path / "pkg")


def test_a_format_1_image_only_package_still_loads(tmp_path: Path):
    from safetensors.torch import load_file, save_file

    config = replace(reference_config(), architecture={"image_encoder": "resnet18"})
    model = build_model(config.architecture, len(config.labels)).eval()
    save_package(model, config, tmp_path / "pkg", "# card\n")
    weights = tmp_path / "pkg" / WEIGHTS_FILE
    state = load_file(str(weights))
    save_file(
        {k.replace("image_encoder.body.", "encoder.", 1): v for k, v in state.items()},
        str(weights),
    )
    old = json.loads((tmp_path / "pkg" / CONFIG_FILE).read_text())
    old["format_version"] = 1
    old["architecture"] = {
        "image_encoder": "resnet18",
        "text_dim": 0,
        "hidden_dim": 256,
        "dropout": 0.2,
    }
    for key in ("text_cleaning", "label_vocabulary", "uncertain_policy"):
        del old[key]
    old["weights_sha256"] = sha256_file(weights)
    (tmp_path / "pkg" / CONFIG_FILE).write_text(json.dumps(old))

    loaded = load_package(tmp_path / "pkg")
    images = torch.rand(1, 3, SMALL, SMALL)
    torch.testing.assert_close(_logits(loaded.model, images), _logits(model, images))
    assert loaded.config.text_cleaning == TextCleaning()


def test_labels_must_match_the_vocabulary_the_config_names():
    config = reference_config()
    with pytest.raises(ValueError, match="not those of vocabulary"):
        replace(config, labels=config.labels[:3])
    with pytest.raises(ValueError, match="unknown label vocabulary"):
        replace(config, label_vocabulary="radlex")
    with pytest.raises(ValueError, match="maybe"):
        replace(config, uncertain_policy="maybe")


def test_preprocessing_channels_reach_the_model(tiny_bert_dir, tmp_path):
    config, model = _preset_model("seed-002", tiny_bert_dir)
    assert config.preprocessing == PreprocessSpec(image_size=SMALL, channels=1)
    save_package(model, config, tmp_path / "pkg", "# card\n")
    first_conv = load_package(tmp_path / "pkg").model.image_encoder.body.conv1
    assert first_conv.in_channels == 1
