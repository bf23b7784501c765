"""The classifier: image encoder, optional text encoder, fusion, MLP head; built from a config.

An ``architecture`` dict (a package's ``config.json`` holds one) names every part::

    {
      "image_encoder": "resnet18" | "resnet50" | "densenet121" | "swin_t"
                     | "efficientnet_lite0" | "efficientnet_lite1" | "efficientnet_lite2",
      "image_weights": null | "imagenet" | "<path of a state dict of the same network>",
      "text_encoder": {"kind": "none"}
                    | {"kind": "hf", "path": "minilm" | "<model dir>", "pooling": "mean" | "cls",
                       "max_length": 256, "trainable": false, "trainable_layers": 0}
                    | {"kind": "token_ffn", "vocab_size": 5000, "max_length": 100,
                       "hidden": 128, "out": 64},
      "fusion": "concat" | "cross_attention",
      "fusion_dim": 256, "fusion_heads": 4,      (cross-attention only)
      "missing_text": "learned" | "zeros",       (the "no report" embedding)
      "modality_dropout": 0.0,                   (training only: P(report treated as missing))
      "init": "default" | "xavier",              (new layers; pretrained weights are kept)
      "hidden_dim": 256, "dropout": 0.2,         (head; hidden_dim 0 = one linear layer)
      "cam_stride": 32 | 16,                     (Grad-CAM's layer: see ImageEncoder)
      "joint_dim": 0                             (>0: a joint image-text space, models.joint)
    }

Missing keys take :data:`ARCHITECTURE_DEFAULTS`. ``image_weights`` is read only when a model is
built to be trained (``load_image_weights=True``); a saved package carries its own weights. A
model built to be trained records what it really started from: ``"imagenet"`` asked for where
this machine has no ImageNet weights for the encoder becomes ``null`` (and a warning says so).

Retrieval embedding (:meth:`CxrClassifier.embed`, what a package stores per image for case
search): a model with a joint space (``joint_dim > 0``, text encoder required) gives the joint
image embedding, which reads the image alone; any other model the fused vector the head reads
(for an image-only model, the pooled image features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.encoders.image import IMAGE_ENCODERS, ImageEncoder, read_image_weights
from models.encoders.text import (
    BUCKET_ROWS,
    POOLINGS,
    HfTextEncoder,
    TextEncoder,
    TokenFfnTextEncoder,
    WordVocabulary,
)
from models.fusion import FUSIONS, ConcatFusion, CrossAttentionFusion, TextContext, pool_image
from models.joint import JointEmbeddings, JointSpace

ARCHITECTURE_DEFAULTS: dict[str, Any] = {
    "image_encoder": "resnet18",
    "image_weights": None,
    "text_encoder": {"kind": "none"},
    "fusion": "concat",
    "fusion_dim": 256,
    "fusion_heads": 4,
    "missing_text": "learned",
    "modality_dropout": 0.0,
    "init": "default",
    "hidden_dim": 256,
    "dropout": 0.2,
    "cam_stride": 32,
    "joint_dim": 0,
}
TEXT_ENCODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "hf": {
        "path": None,
        "pooling": "mean",
        "max_length": 256,
        "trainable": False,
        "trainable_layers": 0,
    },
    "token_ffn": {"vocab_size": 5000, "max_length": 100, "hidden": 128, "out": 64},
}
# Filled in when a model is built or saved, never chosen by hand.
TEXT_ENCODER_RECORDED: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "hf": frozenset({"hidden_size", "weights_sha256", "initial_weights_sha256", "files"}),
    "token_ffn": frozenset({"vocabulary_sha256"}),
}
MISSING_TEXT = ("learned", "zeros")
INITS = ("default", "xavier")


@dataclass
class TextBatch:
    """Tokenized reports of a batch: tensors for the rows that have one, and which rows.

    Attributes
    ----------
    inputs : dict of str to torch.Tensor
        Text-encoder inputs, one row per ``True`` in ``present``, in batch order.
    present : torch.Tensor
        ``(B,)`` bool.
    bucket_rows : int
        Reports per length-sorted group the encoder runs (0: one pass over the batch).
    """

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    bucket_rows: int = 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TextBatch:
        """Return the batch on ``device``."""
        return TextBatch(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()},
            self.present.to(device, non_blocking=non_blocking),
            self.bucket_rows,
        )

    def pin_memory(self) -> TextBatch:
        """Return the batch in page-locked memory, for asynchronous copies to a GPU."""
        inputs = {k: v.pin_memory() for k, v in self.inputs.items()}
        return TextBatch(inputs, self.present, self.bucket_rows)

    @property
    def tokens(self) -> int:
        """Number of token positions the encoder attends over (padding included)."""
        ids = self.inputs.get("input_ids")
        return 0 if ids is None else int(ids.numel())


@dataclass
class Encoded:
    """A batch's embeddings.

    Attributes
    ----------
    fused : torch.Tensor
        ``(B, embedding_dim)``: what the head classifies.
    image : torch.Tensor
        ``(B, image_dim)``: pooled image features alone.
    text : torch.Tensor or None
        ``(B, text_dim)`` pooled report features (the "no report" embedding where a report
        was missing); ``None`` for an image-only model.
    text_present : torch.Tensor
        ``(B,)`` bool, whether the row's report was read.
    joint : JointEmbeddings or None
        The batch in the joint space; ``None`` for a model without one.
    """

    fused: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor | None
    text_present: torch.Tensor
    joint: JointEmbeddings | None = None


class CxrClassifier(nn.Module):
    """Multi-label chest X-ray classifier over images and, optionally, report text.

    Build it with :func:`build_model`. ``forward(images, text)`` returns one logit per label;
    ``text`` is a :class:`TextBatch` from :meth:`tokenize`, or ``None`` when no image has a
    report. A row without a report gets the "no report" embedding (learned, or zeros) in place
    of its text features, so a missing report is an ordinary input, never an error.

    Parameters
    ----------
    architecture : dict
        Normalised architecture (:func:`normalize_architecture`).
    n_labels : int
        Number of outputs.
    image_encoder : ImageEncoder
        The image branch.
    text_encoder : TextEncoder or None
        The text branch; ``None`` for an image-only model.
    """

    def __init__(
        self,
        architecture: dict[str, Any],
        n_labels: int,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        if n_labels < 1:
            raise ValueError(f"invalid sizes: n_labels={n_labels}")
        self.n_labels = n_labels
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_dim = image_encoder.out_dim
        self.text_dim = text_encoder.out_dim if text_encoder is not None else 0
        self.modality_dropout = float(architecture["modality_dropout"])
        if text_encoder is None:
            self.register_parameter("missing_text", None)
        elif architecture["missing_text"] == "learned":
            self.missing_text = nn.Parameter(torch.zeros(self.text_dim))
        else:
            self.register_buffer("missing_text", torch.zeros(self.text_dim), persistent=False)

        if architecture["fusion"] == "cross_attention":
            if text_encoder is None:
                raise ValueError("cross_attention fusion needs a text encoder")
            self.fusion: nn.Module = CrossAttentionFusion(
                self.image_dim,
                self.text_dim,
                dim=int(architecture["fusion_dim"]),
                heads=int(architecture["fusion_heads"]),
                dropout=float(architecture["dropout"]),
            )
        else:
            self.fusion = ConcatFusion(self.image_dim, self.text_dim)
        fused_dim = self.fusion.out_dim
        hidden_dim, dropout = int(architecture["hidden_dim"]), float(architecture["dropout"])
        if hidden_dim > 0:
            self.head = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(fused_dim, hidden_dim),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, n_labels),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused_dim, n_labels))
        # Built last, so that a model without one draws the same initial weights as before.
        joint_dim = int(architecture.get("joint_dim", 0))
        self.joint = JointSpace(self.image_dim, self.text_dim, joint_dim) if joint_dim else None
        self.architecture = dict(architecture)
        if text_encoder is not None:
            self.architecture["text_encoder"] = {
                **architecture["text_encoder"],
                **text_encoder.spec(),
            }

    @property
    def uses_text(self) -> bool:
        """Whether the model has a text branch."""
        return self.text_encoder is not None

    @property
    def embedding_dim(self) -> int:
        """Width of the fused embedding the head classifies."""
        return self.fusion.out_dim

    @property
    def retrieval_dim(self) -> int:
        """Width of :meth:`embed`'s vectors: the joint space's, else the fused embedding's."""
        return self.joint.dim if self.joint is not None else self.embedding_dim

    @property
    def output_layer(self) -> nn.Linear:
        """The final linear layer, whose bias sets each label's prior."""
        return self.head[-1]

    def target_layer(self) -> nn.Module:
        """The image encoder's last ``(B, C, h, w)`` block, for Grad-CAM."""
        return self.image_encoder.target_layer()

    def tokenize(
        self, texts: Sequence[str | None] | None, padding: str = "bucketed"
    ) -> TextBatch | None:
        """Tokenize cleaned reports (``None`` for a missing one) for :meth:`forward`.

        Parameters
        ----------
        texts : sequence of (str or None), or None
            One cleaned report per image (``models.text.TextCleaning`` output).
        padding : str
            ``"bucketed"`` (default) pads to the longest report and lets the encoder run
            length-sorted groups of reports, each cut to its own longest; ``"longest"`` runs
            the batch padded to its longest report; ``"max_length"`` pads to the encoder's
            maximum (only to measure what dynamic padding saves). Results are the same.

        Returns
        -------
        TextBatch or None
            ``None`` when the model is image-only or no image has a report.
        """
        if self.text_encoder is None or texts is None:
            return None
        present = [text is not None for text in texts]
        if not any(present):
            return None
        inputs = self.text_encoder.tokenize([t for t in texts if t is not None], padding)
        buckets = BUCKET_ROWS if padding == "bucketed" else 0
        return TextBatch(inputs, torch.tensor(present, dtype=torch.bool), buckets)

    def encode_text(self, text: TextBatch | None, batch_size: int) -> TextContext | None:
        """Encode a batch's reports, filling rows without one with the "no report" embedding.

        Returns
        -------
        TextContext or None
            ``None`` for an image-only model.

        Raises
        ------
        ValueError
            If an image-only model is given text, or ``text`` does not fit the batch.
        """
        if self.text_encoder is None:
            if text is not None:
                raise ValueError("this model is image-only (no text encoder); got text")
            return None
        fill = self.missing_text
        device = fill.device
        if text is not None and text.present.shape != (batch_size,):
            raise ValueError(
                f"text batch is for {tuple(text.present.shape)} rows, images for {batch_size}"
            )
        if text is None or not bool(text.present.any()):
            present = torch.zeros(batch_size, dtype=torch.bool, device=device)
            tokens = fill.new_zeros(batch_size, 1, self.text_dim)
            mask = torch.zeros(batch_size, 1, dtype=torch.bool, device=device)
            pooled = fill.new_zeros(batch_size, self.text_dim)
        else:
            present = text.present.to(device)
            features = self.text_encoder(text.inputs, text.bucket_rows)
            length = features.tokens.shape[1]
            tokens = features.tokens.new_zeros(batch_size, length, self.text_dim)
            tokens[present] = features.tokens
            mask = torch.zeros(batch_size, length, dtype=torch.bool, device=device)
            mask[present] = features.mask
            pooled = features.pooled.new_zeros(batch_size, self.text_dim)
            pooled[present] = features.pooled
        if self.training and self.modality_dropout > 0:
            kept = torch.rand(batch_size, device=device) >= self.modality_dropout
            present = present & kept
        missing = ~present
        fill = fill.to(tokens.dtype)
        first = torch.zeros(tokens.shape[1], dtype=torch.bool, device=device)
        first[0] = True
        slot = missing[:, None] & first[None, :]
        tokens = torch.where(missing[:, None, None], torch.zeros_like(tokens), tokens)
        tokens = torch.where(slot[..., None], fill, tokens)
        mask = torch.where(missing[:, None], first[None, :], mask)
        pooled = torch.where(missing[:, None], fill.to(pooled.dtype), pooled)
        return TextContext(tokens, mask, pooled, present)

    def fuse(self, image_map: torch.Tensor, text: TextContext | None) -> torch.Tensor:
        """Return the fused embedding of an image feature map and its text context."""
        return self.fusion(image_map, text)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Return the logits of fused embeddings."""
        return self.head(embedding)

    def encode(self, images: torch.Tensor, text: TextBatch | None = None) -> Encoded:
        """Return the fused, image and text embeddings of a batch (see :class:`Encoded`)."""
        context = self.encode_text(text, images.shape[0])
        image_map = self.image_encoder(images)
        fused = self.fuse(image_map, context)
        pooled = pool_image(image_map)
        if context is None:
            present = torch.zeros(images.shape[0], dtype=torch.bool, device=fused.device)
            return Encoded(fused, pooled, None, present)
        joint = None if self.joint is None else self.joint(pooled, context.pooled, context.present)
        return Encoded(fused, pooled, context.pooled, context.present, joint)

    def retrieval_vector(self, image_map: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """Return the embedding cases are retrieved by, from an image feature map and its fused
        embedding: the joint image embedding where the model has a joint space, else ``fused``."""
        if self.joint is None:
            return fused
        return self.joint.image(pool_image(image_map))

    def embed(self, images: torch.Tensor, text: TextBatch | None = None) -> torch.Tensor:
        """Return the ``(B, retrieval_dim)`` retrieval embedding (see the module docstring).

        With a joint space the report is not read: the image alone places the case.
        """
        if self.joint is not None:
            return self.joint.image(pool_image(self.image_encoder(images)))
        return self.encode(images, text).fused

    def embed_text(self, text: TextBatch) -> torch.Tensor:
        """Return ``(R, joint_dim)`` joint embeddings of a batch's reports alone (no image), one
        per row that has a report, in batch order.

        Raises
        ------
        ValueError
            If the model has no joint space.
        """
        if self.joint is None:
            raise ValueError("this model has no joint image-text space (joint_dim = 0)")
        context = self.encode_text(text, int(text.present.shape[0]))
        assert context is not None
        return self.joint.text(context.pooled[context.present])

    def forward(self, images: torch.Tensor, text: TextBatch | None = None) -> torch.Tensor:
        """Return ``(B, n_labels)`` logits of ``(B, C, H, W)`` normalised images."""
        return self.classify(self.encode(images, text).fused)


def normalize_architecture(architecture: dict[str, Any]) -> dict[str, Any]:
    """Validate an architecture and fill in its defaults.

    Parameters
    ----------
    architecture : dict
        As in the module docstring; missing keys take their defaults. A format-1 package's
        ``"text_dim": 0`` is accepted and dropped.

    Returns
    -------
    dict
        A complete architecture (a new dict).

    Raises
    ------
    ValueError
        If a key is unknown or a value is invalid.
    """
    given = dict(architecture)
    legacy_text_dim = given.pop("text_dim", 0)
    if legacy_text_dim:
        raise ValueError("'text_dim' models of package format 1 had no text encoder; retrain")
    unknown = set(given) - set(ARCHITECTURE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
    merged = {**ARCHITECTURE_DEFAULTS, **given}
    if merged["image_encoder"] not in IMAGE_ENCODERS:
        raise ValueError(
            f"unknown image encoder {merged['image_encoder']!r}; known: {sorted(IMAGE_ENCODERS)}"
        )
    if merged["image_weights"] is not None and not isinstance(merged["image_weights"], str):
        raise ValueError("image_weights must be null, 'imagenet' or a path")
    merged["text_encoder"] = _normalize_text_encoder(merged["text_encoder"])
    _choice(merged, "fusion", FUSIONS)
    _choice(merged, "missing_text", MISSING_TEXT)
    _choice(merged, "init", INITS)
    if merged["fusion"] == "cross_attention" and merged["text_encoder"]["kind"] == "none":
        raise ValueError("cross_attention fusion needs a text encoder")
    for key in ("hidden_dim", "fusion_dim", "fusion_heads", "cam_stride", "joint_dim"):
        merged[key] = int(merged[key])
    if merged["joint_dim"] < 0:
        raise ValueError(f"joint_dim must be >= 0 (0: no joint space), not {merged['joint_dim']}")
    if merged["joint_dim"] and merged["text_encoder"]["kind"] == "none":
        raise ValueError("a joint image-text space (joint_dim > 0) needs a text encoder")
    for key in ("dropout", "modality_dropout"):
        merged[key] = float(merged[key])
    if merged["hidden_dim"] < 0 or merged["fusion_dim"] < 1 or merged["fusion_heads"] < 1:
        raise ValueError(
            f"invalid sizes: hidden_dim={merged['hidden_dim']}, "
            f"fusion_dim={merged['fusion_dim']}, fusion_heads={merged['fusion_heads']}"
        )
    if not 0.0 <= merged["dropout"] < 1.0 or not 0.0 <= merged["modality_dropout"] < 1.0:
        raise ValueError("dropout and modality_dropout must be in [0, 1)")
    return merged


def _choice(merged: dict[str, Any], key: str, allowed: Sequence[str]) -> None:
    if merged[key] not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, not {merged[key]!r}")


def _normalize_text_encoder(entry: Any) -> dict[str, Any]:
    if entry is None or entry == "none":
        entry = {"kind": "none"}
    if not isinstance(entry, dict) or entry.get("kind") not in TEXT_ENCODER_DEFAULTS:
        raise ValueError(
            f"text_encoder must be a dict with 'kind' one of {sorted(TEXT_ENCODER_DEFAULTS)}"
        )
    kind = entry["kind"]
    defaults = TEXT_ENCODER_DEFAULTS[kind]
    unknown = set(entry) - {"kind"} - set(defaults) - TEXT_ENCODER_RECORDED[kind]
    if unknown:
        raise ValueError(f"unknown {kind} text_encoder keys: {sorted(unknown)}")
    merged = {"kind": kind, **defaults, **entry}
    if kind == "hf":
        if not isinstance(merged["path"], str) or not merged["path"]:
            raise ValueError("an hf text_encoder needs 'path': 'minilm' or a model directory")
        if merged["pooling"] not in POOLINGS:
            raise ValueError(f"text_encoder pooling must be one of {POOLINGS}")
        if not isinstance(merged["trainable"], bool):
            raise ValueError("text_encoder 'trainable' must be true or false")
        merged["max_length"] = int(merged["max_length"])
        merged["trainable_layers"] = int(merged["trainable_layers"])
        if merged["trainable_layers"] < 0:
            raise ValueError("text_encoder 'trainable_layers' must be >= 0")
    elif kind == "token_ffn":
        for key in ("vocab_size", "max_length", "hidden", "out"):
            merged[key] = int(merged[key])
    return merged


def build_text_encoder(
    entry: dict[str, Any],
    *,
    vocabulary: WordVocabulary | None = None,
    structure_from: Path | None = None,
) -> TextEncoder | None:
    """Build the text encoder a normalised ``text_encoder`` entry describes.

    Parameters
    ----------
    entry : dict
        ``architecture["text_encoder"]``.
    vocabulary : WordVocabulary, optional
        A ``token_ffn`` encoder's vocabulary; an empty one (every word unknown) when absent.
    structure_from : pathlib.Path, optional
        For an ``hf`` encoder whose weights come from a package: the package's copy of its
        config and tokenizer. Otherwise the pretrained weights are loaded from ``path``.

    Returns
    -------
    TextEncoder or None
        ``None`` for ``{"kind": "none"}``.
    """
    kind = entry["kind"]
    if kind == "none":
        return None
    if kind == "token_ffn":
        return TokenFfnTextEncoder(
            vocabulary if vocabulary is not None else WordVocabulary(()),
            vocab_size=entry["vocab_size"],
            max_length=entry["max_length"],
            hidden=entry["hidden"],
            out=entry["out"],
        )
    # Loading must not consume the caller's random stream: the layers built after the encoder
    # would otherwise be initialised differently depending on what transformers did.
    with torch.random.fork_rng(devices=[]):
        return HfTextEncoder.load(
            entry["path"],
            pooling=entry["pooling"],
            max_length=entry["max_length"],
            trainable=entry["trainable"],
            trainable_layers=entry["trainable_layers"],
            structure_from=structure_from,
        )


def build_model(
    architecture: dict[str, Any],
    n_labels: int,
    *,
    in_channels: int = 3,
    load_image_weights: bool = False,
    vocabulary: WordVocabulary | None = None,
    text_structure_from: Path | None = None,
) -> CxrClassifier:
    """Build a classifier from an architecture description.

    Parameters
    ----------
    architecture : dict
        See the module docstring; missing keys take their defaults.
    n_labels : int
        Number of outputs.
    in_channels : int
        Channels of the model input (the preprocessing spec's ``channels``).
    load_image_weights : bool
        Initialise the image encoder from ``architecture["image_weights"]`` (to train); a
        package's own weights replace them anyway.
    vocabulary : WordVocabulary, optional
        The vocabulary of a ``token_ffn`` text encoder.
    text_structure_from : pathlib.Path, optional
        See :func:`build_text_encoder`.

    Returns
    -------
    CxrClassifier
        The model in training mode. A pretrained ``hf`` text encoder carries its weights; all
        other new layers are randomly initialised.

    Raises
    ------
    ValueError
        If the architecture is invalid.
    FileNotFoundError
        If a text encoder's directory or explicit image weights are missing.
    """
    arch = normalize_architecture(architecture)
    image_state = (
        read_image_weights(arch["image_encoder"], arch["image_weights"])
        if load_image_weights
        else None
    )
    if load_image_weights and image_state is None:
        arch = {**arch, "image_weights": None}  # never claim weights it did not start from
    image_encoder = ImageEncoder(
        arch["image_encoder"], in_channels, image_state, cam_stride=arch["cam_stride"]
    )
    text_encoder = build_text_encoder(
        arch["text_encoder"], vocabulary=vocabulary, structure_from=text_structure_from
    )
    model = CxrClassifier(arch, int(n_labels), image_encoder, text_encoder)
    if arch["init"] == "xavier":
        parts: list[nn.Module] = [model.fusion, model.head]
        if isinstance(text_encoder, TokenFfnTextEncoder):
            parts.append(text_encoder)
        if not image_encoder.pretrained:
            parts.append(image_encoder)
        for part in parts:
            xavier_init(part)
    return model


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every linear and convolutional layer
    (seed 001's remedy for exploding gradients)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.MultiheadAttention) and layer.in_proj_weight is not None:
            nn.init.xavier_uniform_(layer.in_proj_weight)
