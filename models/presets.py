"""The five seed architectures as named presets, ready to train or to describe a package.

Each preset fixes what its seed README fixes (encoders, fusion, head, labels, image and text
preprocessing) and leaves open what a site decides: where a BERT-family encoder lives on disk,
the model's name and provenance. ``"imagenet"`` image weights are read from the torch cache
when present (see :mod:`models.encoders.image`), else the encoder starts from scratch.

============  ==============================================================================
preset        architecture
============  ==============================================================================
seed-000      ResNet-18 + BioBERT (path), concatenation, dropout MLP, normal/abnormal, label
              words masked in the text (leakage), 256 tokens
seed-001      DenseNet-121 + BERT-family transformer (path), concatenation, Xavier init,
              CheXpert/MIMIC-CXR 14 labels, uncertain labels as positive (U-Ones)
seed-002      ResNet-18 on gray input + word ids (100) through a 128-64 MLP, concatenation,
              linear head, normal/abnormal
seed-003      Swin-T + ClinicalBERT (path), cross-modal attention, Open-i MeSH 22 labels
seed-004      DenseNet-121 image-only, 320 px, linear head, NIH ChestX-ray14 14 labels
============  ==============================================================================
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from models.labels import VOCABULARIES
from models.package import LabelConfig, ModelConfig
from models.preprocess import PreprocessSpec
from models.text import DEFAULT_SECTIONS, TextCleaning


@dataclass(frozen=True)
class Preset:
    """A seed architecture with its labels and preprocessing.

    Attributes
    ----------
    key : str
        ``"seed-000"``...
    description : str
        One line for humans.
    architecture : dict
        As :func:`models.network.build_model` takes it; an ``hf`` text encoder's ``path`` is
        ``None`` until :meth:`model_config` is given one.
    label_vocabulary : str
        Key of :data:`models.labels.VOCABULARIES`.
    preprocessing : PreprocessSpec
        Image input.
    text_cleaning : TextCleaning
        Report text input.
    uncertain_policy : str or None
        How uncertain labels are trained (CheXpert/MIMIC-CXR only).
    text_encoder_hint : str
        What the ``hf`` encoder's directory should hold.
    """

    key: str
    description: str
    architecture: dict[str, Any]
    label_vocabulary: str
    preprocessing: PreprocessSpec = field(default_factory=PreprocessSpec)
    text_cleaning: TextCleaning = field(default_factory=TextCleaning)
    uncertain_policy: str | None = None
    text_encoder_hint: str = ""

    def resolved_architecture(self, text_encoder_path: str | None = None) -> dict[str, Any]:
        """Return the architecture with the ``hf`` text encoder's directory filled in.

        Raises
        ------
        ValueError
            If the preset has an ``hf`` text encoder and no path is given.
        """
        architecture = copy.deepcopy(self.architecture)
        text = architecture.get("text_encoder", {})
        if text.get("kind") == "hf":
            if not text_encoder_path:
                raise ValueError(
                    f"{self.key} needs the directory of its text encoder "
                    f"({self.text_encoder_hint}); pass text_encoder_path"
                )
            text["path"] = text_encoder_path
        return architecture

    def model_config(
        self,
        name: str,
        version: str,
        *,
        trained: bool,
        disclaimer: str,
        training_data: str,
        text_encoder_path: str | None = None,
        image_size: int | None = None,
        threshold: float = 0.5,
    ) -> ModelConfig:
        """Return a package config for a model of this preset.

        Parameters
        ----------
        name, version, trained, disclaimer, training_data
            As :class:`models.package.ModelConfig` takes them.
        text_encoder_path : str, optional
            Directory of the ``hf`` text encoder (``"minilm"`` for the bundled MiniLM).
        image_size : int, optional
            Overrides the preset's input size.
        threshold : float
            Operating threshold of every label until a trainer calibrates them.
        """
        preprocessing = self.preprocessing
        if image_size is not None:
            preprocessing = replace(preprocessing, image_size=image_size)
        return ModelConfig(
            name=name,
            version=version,
            architecture=self.resolved_architecture(text_encoder_path),
            preprocessing=preprocessing,
            labels=tuple(
                LabelConfig.from_label(label, threshold)
                for label in VOCABULARIES[self.label_vocabulary]
            ),
            trained=trained,
            disclaimer=disclaimer,
            training_data=training_data,
            text_cleaning=self.text_cleaning,
            label_vocabulary=self.label_vocabulary,
            uncertain_policy=self.uncertain_policy,
        )


def _hf(pooling: str = "cls", max_length: int = 256, trainable: bool = False) -> dict[str, Any]:
    return {
        "kind": "hf",
        "path": None,
        "pooling": pooling,
        "max_length": max_length,
        "trainable": trainable,
    }


PRESETS: dict[str, Preset] = {
    preset.key: preset
    for preset in (
        Preset(
            key="seed-000",
            description="ResNet-18 + BioBERT, concatenation, dropout MLP, normal/abnormal",
            architecture={
                "image_encoder": "resnet18",
                "image_weights": "imagenet",
                "text_encoder": _hf("cls", 256),
                "fusion": "concat",
                "hidden_dim": 256,
                "dropout": 0.3,
            },
            label_vocabulary="normal-abnormal",
            text_cleaning=TextCleaning(DEFAULT_SECTIONS, mask_words=("normal", "abnormal")),
            text_encoder_hint="dmis-lab/biobert-v1.1",
        ),
        Preset(
            key="seed-001",
            description="DenseNet-121 + BERT-family, concatenation, Xavier init, CheXpert 14",
            architecture={
                "image_encoder": "densenet121",
                "image_weights": "imagenet",
                "text_encoder": _hf("cls", 256),
                "fusion": "concat",
                "init": "xavier",
                "hidden_dim": 512,
                "dropout": 0.2,
            },
            label_vocabulary="chexpert-14",
            uncertain_policy="ones",
            text_encoder_hint="a BERT-family model, e.g. emilyalsentzer/Bio_ClinicalBERT",
        ),
        Preset(
            key="seed-002",
            description="ResNet-18 (gray) + word ids through an MLP, linear head, normal/abnormal",
            architecture={
                "image_encoder": "resnet18",
                "image_weights": "imagenet",
                "text_encoder": {
                    "kind": "token_ffn",
                    "vocab_size": 5000,
                    "max_length": 100,
                    "hidden": 128,
                    "out": 64,
                },
                "fusion": "concat",
                "hidden_dim": 0,
                "dropout": 0.0,
            },
            label_vocabulary="normal-abnormal",
            preprocessing=PreprocessSpec(image_size=224, channels=1),
        ),
        Preset(
            key="seed-003",
            description="Swin-T + ClinicalBERT, cross-modal attention, Open-i MeSH 22 labels",
            architecture={
                "image_encoder": "swin_t",
                "image_weights": "imagenet",
                "text_encoder": _hf("mean", 256),
                "fusion": "cross_attention",
                "fusion_dim": 256,
                "fusion_heads": 8,
                "hidden_dim": 256,
                "dropout": 0.1,
                "modality_dropout": 0.1,
            },
            label_vocabulary="openi-mesh-22",
            text_encoder_hint="emilyalsentzer/Bio_ClinicalBERT",
        ),
        Preset(
            key="seed-004",
            description="DenseNet-121 image-only, 320 px, NIH ChestX-ray14",
            architecture={
                "image_encoder": "densenet121",
                "image_weights": "imagenet",
                "text_encoder": {"kind": "none"},
                "hidden_dim": 0,
                "dropout": 0.0,
            },
            label_vocabulary="nih-chestxray14",
            preprocessing=PreprocessSpec(image_size=320, channels=3),
        ),
    )
}
