"""The classifier: an image encoder, an optional report-text input, concat fusion, an MLP head.

Encoders are built from torchvision with ``weights=None``: nothing is ever downloaded at run
time. Pretrained (e.g. ImageNet) weights arrive later from a file the user provides, loaded into
the encoder by the trainer before a package is exported.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision import models as tv

ARCHITECTURE_DEFAULTS: dict[str, Any] = {
    "image_encoder": "resnet18",
    "text_dim": 0,
    "hidden_dim": 256,
    "dropout": 0.2,
}


def _resnet(factory: Callable[..., tv.ResNet]) -> nn.Module:
    net = factory(weights=None)
    parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in parts))


def _densenet(factory: Callable[..., tv.DenseNet]) -> nn.Module:
    net = factory(weights=None)
    # torchvision applies this ReLU in DenseNet.forward, not as a module; make it one so that
    # Grad-CAM hooks the same rectified activations the pooling sees.
    return nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU()))


# name -> (builder, output channels, path of the last conv block inside the encoder)
IMAGE_ENCODERS: dict[str, tuple[Callable[[], nn.Module], int, str]] = {
    "resnet18": (lambda: _resnet(tv.resnet18), 512, "layer4"),
    "resnet50": (lambda: _resnet(tv.resnet50), 2048, "layer4"),
    "densenet121": (lambda: _densenet(tv.densenet121), 1024, "relu"),
}


class CxrClassifier(nn.Module):
    """Multi-label chest X-ray classifier with an optional report-text input.

    ``forward(images, text_features)`` returns one logit per label. The image branch is a CNN
    encoder followed by global average pooling; the text branch takes precomputed text
    features of ``text_dim`` values. When an image comes without a report, a learned
    "no report" embedding takes the place of the text features, so the same model serves both
    cases. With ``text_dim = 0`` the model is image-only.

    Parameters
    ----------
    image_encoder : str
        One of :data:`IMAGE_ENCODERS` (``"resnet18"``, ``"resnet50"``, ``"densenet121"``).
    n_labels : int
        Number of outputs.
    text_dim : int
        Width of the text features; 0 for an image-only model.
    hidden_dim : int
        Width of the head's hidden layer; 0 for a linear head.
    dropout : float
        Dropout probability in the head.
    """

    def __init__(
        self,
        image_encoder: str,
        n_labels: int,
        text_dim: int = 0,
        hidden_dim: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if image_encoder not in IMAGE_ENCODERS:
            raise ValueError(
                f"unknown image encoder {image_encoder!r}; known: {sorted(IMAGE_ENCODERS)}"
            )
        if n_labels < 1 or text_dim < 0 or hidden_dim < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"invalid sizes: n_labels={n_labels}, text_dim={text_dim}, "
                f"hidden_dim={hidden_dim}, dropout={dropout}"
            )
        build, self.image_dim, self._target_path = IMAGE_ENCODERS[image_encoder]
        self.architecture: dict[str, Any] = {
            "image_encoder": image_encoder,
            "text_dim": text_dim,
            "hidden_dim": hidden_dim,
            "dropout": dropout,
        }
        self.n_labels = n_labels
        self.text_dim = text_dim
        self.encoder = build()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if text_dim > 0:
            self.no_report = nn.Parameter(torch.zeros(text_dim))
        else:
            self.register_parameter("no_report", None)
        fused_dim = self.image_dim + text_dim
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

    @property
    def embedding_dim(self) -> int:
        """Width of the fused embedding returned by :meth:`embed`."""
        return self.image_dim + self.text_dim

    @property
    def output_layer(self) -> nn.Linear:
        """The final linear layer, whose bias sets each label's prior."""
        return self.head[-1]

    def target_layer(self) -> nn.Module:
        """Return the last convolutional block of the image encoder, for Grad-CAM."""
        return self.encoder.get_submodule(self._target_path)

    def embed(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the fused embedding: pooled image features concatenated with text features.

        Parameters
        ----------
        images : torch.Tensor
            ``(B, C, H, W)`` normalised images.
        text_features : torch.Tensor or None
            ``(B, text_dim)`` report features; ``None`` means no report for any image.

        Returns
        -------
        torch.Tensor
            ``(B, embedding_dim)`` embedding.

        Raises
        ------
        ValueError
            If text features are given to an image-only model or have the wrong shape.
        """
        if self.text_dim == 0:
            if text_features is not None:
                raise ValueError("this model is image-only (text_dim = 0); got text features")
            return self.pool(self.encoder(images))
        if text_features is None:
            text_features = self.no_report.expand(images.shape[0], -1)
        elif text_features.shape != (images.shape[0], self.text_dim):
            raise ValueError(
                f"text features must be ({images.shape[0]}, {self.text_dim}), "
                f"got {tuple(text_features.shape)}"
            )
        image_features = self.pool(self.encoder(images))
        return torch.cat([image_features, text_features.to(image_features.dtype)], dim=1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Return the logits for fused embeddings from :meth:`embed`."""
        return self.head(embedding)

    def forward(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return ``(B, n_labels)`` logits; see :meth:`embed` for the inputs."""
        return self.classify(self.embed(images, text_features))


def build_model(architecture: dict[str, Any], n_labels: int) -> CxrClassifier:
    """Build an untrained classifier from an architecture description.

    Parameters
    ----------
    architecture : dict
        Keys of :data:`ARCHITECTURE_DEFAULTS`; missing keys take their default.
    n_labels : int
        Number of outputs.

    Returns
    -------
    CxrClassifier
        The model, randomly initialised, in training mode.

    Raises
    ------
    ValueError
        If a key is unknown or a value is invalid.
    """
    unknown = set(architecture) - set(ARCHITECTURE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
    merged = {**ARCHITECTURE_DEFAULTS, **architecture}
    return CxrClassifier(
        image_encoder=str(merged["image_encoder"]),
        n_labels=int(n_labels),
        text_dim=int(merged["text_dim"]),
        hidden_dim=int(merged["hidden_dim"]),
        dropout=float(merged["dropout"]),
    )
