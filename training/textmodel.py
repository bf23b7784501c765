"""The text branch alone: a family text encoder under the same kind of head as the classifier.

Used to measure what report text carries by itself (IU X-ray has reports but no images here),
and to compare encoders against simple baselines on the same folds. Its text encoder is built
by :func:`models.network.build_text_encoder` from the same architecture entry a multimodal
model uses, so what is measured here is what the multimodal model's text branch starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.encoders.text import WordVocabulary
from models.network import TextBatch, build_text_encoder, normalize_architecture


class TextOnlyClassifier(nn.Module):
    """Text encoder, pooled features, dropout MLP head; a missing text gets a learned embedding.

    Parameters
    ----------
    architecture : dict
        A classifier architecture (:mod:`models.network`); its ``text_encoder``, ``hidden_dim``
        and ``dropout`` are used.
    n_labels : int
    vocabulary : WordVocabulary, optional
        For a ``token_ffn`` encoder.
    """

    def __init__(
        self, architecture: dict[str, Any], n_labels: int, vocabulary: WordVocabulary | None = None
    ) -> None:
        super().__init__()
        arch = normalize_architecture(architecture)
        encoder = build_text_encoder(arch["text_encoder"], vocabulary=vocabulary)
        if encoder is None:
            raise ValueError("a text-only classifier needs a text encoder")
        self.architecture = arch
        self.text_encoder = encoder
        self.missing_text = nn.Parameter(torch.zeros(encoder.out_dim))
        hidden, dropout = arch["hidden_dim"], arch["dropout"]
        if hidden > 0:
            self.head = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(encoder.out_dim, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, n_labels),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.out_dim, n_labels))
        self.n_labels = n_labels

    def tokenize(self, texts: Sequence[str | None]) -> TextBatch | None:
        """Tokenize cleaned texts (``None`` where a sample has none)."""
        present = [t is not None for t in texts]
        if not any(present):
            return None
        inputs = self.text_encoder.tokenize([t for t in texts if t is not None], "bucketed")
        return TextBatch(inputs, torch.tensor(present, dtype=torch.bool), 16)

    def forward(self, text: TextBatch | None, batch_size: int) -> torch.Tensor:
        """Return ``(batch_size, n_labels)`` logits."""
        pooled = self.missing_text.expand(batch_size, -1)
        if text is not None:
            features = self.text_encoder(text.inputs, text.bucket_rows).pooled
            filled = pooled.clone()
            filled[text.present.to(pooled.device)] = features.to(pooled.dtype)
            pooled = filled
        return self.head(pooled)
