"""Fixtures for the models tests: the reference package, a tiny BERT, small architectures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.default import build_reference_package
from models.encoders.text import resolve_hf_source
from models.package import LoadedPackage, load_package
from models.predictor import Predictor

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@pytest.fixture(scope="session")
def reference_package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reference_package(tmp_path_factory.mktemp("packages") / "reference")


@pytest.fixture
def reference_package(reference_package_dir: Path) -> LoadedPackage:
    return load_package(reference_package_dir)


@pytest.fixture(scope="session")
def predictor(reference_package_dir: Path) -> Predictor:
    """The reference package's predictor, shared: tests must leave it as they found it."""
    return Predictor(load_package(reference_package_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT model directory as BioBERT/ClinicalBERT come: one layer, 32 wide, random weights,
    MiniLM's uncased WordPiece tokenizer. Stands in for any "hf" encoder given by path."""
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-bert")
    source = resolve_hf_source("minilm")
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, directory / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(directory)
    return directory
