"""Fusion of the image feature map with the report's text features.

Both fusions take the image encoder's ``(B, C, h, w)`` map and a :class:`TextContext` in which
every row has text: reports that were missing were already given the classifier's "no report"
embedding, so a fusion never branches on whether a report exists.

- ``concat`` (seeds 000, 002): the pooled image vector beside the pooled report vector.
- ``cross_attention`` (seed 003): image-grid tokens attend to the report's tokens (one
  multi-head attention layer and a feed-forward layer, each residual and layer-normed, in a
  shared ``dim``-wide space); the attended image tokens are pooled and set beside the report
  vector projected into the same space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FUSIONS = ("concat", "cross_attention")


@dataclass
class TextContext:
    """Text features for every row of a batch, missing reports filled in.

    Attributes
    ----------
    tokens : torch.Tensor
        ``(B, T, D)``; a row without a report holds the "no report" embedding as its one token.
    mask : torch.Tensor
        ``(B, T)`` bool, True for real tokens.
    pooled : torch.Tensor
        ``(B, D)`` one vector per row (the "no report" embedding where there was none).
    present : torch.Tensor
        ``(B,)`` bool, whether the row had a report (after modality dropout, in training).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    present: torch.Tensor

    def select(self, rows: torch.Tensor) -> TextContext:
        """Return the context of the given rows (e.g. an image repeated once per label)."""
        return TextContext(
            self.tokens[rows], self.mask[rows], self.pooled[rows], self.present[rows]
        )


def pool_image(image_map: torch.Tensor) -> torch.Tensor:
    """Global average pooling: ``(B, C, h, w)`` to ``(B, C)``."""
    return image_map.mean(dim=(2, 3))


class ConcatFusion(nn.Module):
    """Pooled image features concatenated with the pooled report vector (if any)."""

    def __init__(self, image_dim: int, text_dim: int) -> None:
        super().__init__()
        self.out_dim = image_dim + text_dim

    def forward(self, image_map: torch.Tensor, text: TextContext | None) -> torch.Tensor:
        """Return ``(B, image_dim + text_dim)``."""
        image = pool_image(image_map)
        if text is None:
            return image
        return torch.cat([image, text.pooled.to(image.dtype)], dim=1)


class CrossAttentionFusion(nn.Module):
    """Image tokens attend to report tokens in a shared space; see the module docstring.

    Parameters
    ----------
    image_dim, text_dim : int
        Widths of the image map's channels and of the text features.
    dim : int
        Width of the shared space; the fused vector is ``2 * dim`` wide.
    heads : int
        Attention heads (must divide ``dim``).
    dropout : float
        Dropout inside attention and the feed-forward layer.
    """

    def __init__(
        self, image_dim: int, text_dim: int, dim: int = 256, heads: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion_dim {dim} is not divisible by fusion_heads {heads}")
        self.out_dim = 2 * dim
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, image_map: torch.Tensor, text: TextContext | None) -> torch.Tensor:
        """Return ``(B, 2 * dim)``."""
        return self._attend(image_map, text, need_weights=False)[0]

    def attention_weights(self, image_map: torch.Tensor, text: TextContext | None) -> torch.Tensor:
        """Return the attention of each image-grid token over the report's tokens.

        The same pass as :meth:`forward`, asked for its weights (which the default path never
        computes: ``need_weights=False`` lets PyTorch take its fused kernel).

        Parameters
        ----------
        image_map : torch.Tensor
            ``(B, C, h, w)`` image features.
        text : TextContext
            The batch's text context.

        Returns
        -------
        torch.Tensor
            ``(B, h * w, T)`` weights averaged over the heads, row-major over the grid; each
            row sums to 1 over the real tokens, padding gets 0.
        """
        weights = self._attend(image_map, text, need_weights=True)[1]
        assert weights is not None
        return weights

    def _attend(
        self, image_map: torch.Tensor, text: TextContext | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if text is None:
            raise ValueError("cross-attention fusion needs a text context")
        image_tokens = self.image_proj(image_map.flatten(2).transpose(1, 2))  # (B, hw, dim)
        text_tokens = self.text_proj(text.tokens.to(image_tokens.dtype))  # (B, T, dim)
        attended, weights = self.attention(
            image_tokens,
            text_tokens,
            text_tokens,
            key_padding_mask=~text.mask,
            need_weights=need_weights,
            average_attn_weights=True,
        )
        tokens = self.attention_norm(image_tokens + attended)
        tokens = self.ffn_norm(tokens + self.ffn(tokens))
        report = self.text_proj(text.pooled.to(image_tokens.dtype))
        return torch.cat([tokens.mean(dim=1), report], dim=1), weights
