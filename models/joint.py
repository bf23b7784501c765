"""A shared image–text embedding space (seed 003's "joint space"), for case retrieval.

Two linear projections map the pooled image features and the pooled report features into one
``joint_dim``-wide space, where both are compared by cosine similarity; a learnable
temperature scales those similarities into the logits of the contrastive (CLIP-style) loss
that trains them (``training.contrastive``). The image side reads the image alone, so a study
without a report is placed in the space as well as one with, and a report alone can be placed
there too: an image finds cases, and a report finds images.

The projections are their own layers, not the cross-attention fusion's ``image_proj`` and
``text_proj``: concatenation fusion has no projections to share, and the fusion's stay what the
classification head was trained to read, whether or not the space is trained beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# CLIP's initial temperature (Radford et al. 2021), and its cap on the logit scale (100).
INITIAL_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


@dataclass
class JointEmbeddings:
    """A batch in the joint space.

    Attributes
    ----------
    image : torch.Tensor
        ``(B, joint_dim)`` unit-length image embeddings.
    text : torch.Tensor
        ``(B, joint_dim)`` unit-length report embeddings (a row without a report holds the
        projected "no report" embedding: see ``present``).
    present : torch.Tensor
        ``(B,)`` bool, whether the row's report was read.
    logit_scale : torch.Tensor
        Scalar, the inverse temperature the cosine similarities are multiplied by.
    """

    image: torch.Tensor
    text: torch.Tensor
    present: torch.Tensor
    logit_scale: torch.Tensor


class JointSpace(nn.Module):
    """Image and text projections into one space, and the learnable temperature.

    Parameters
    ----------
    image_dim, text_dim : int
        Widths of the pooled image and report features.
    dim : int
        Width of the joint space.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"joint_dim must be >= 1, not {dim}")
        self.dim = dim
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        # Stored as a log so that it stays positive under gradient steps, as CLIP does.
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / INITIAL_TEMPERATURE)))

    def image(self, pooled_image: torch.Tensor) -> torch.Tensor:
        """Return ``(B, dim)`` unit-length embeddings of ``(B, image_dim)`` pooled features."""
        return F.normalize(self.image_proj(pooled_image), dim=-1)

    def text(self, pooled_text: torch.Tensor) -> torch.Tensor:
        """Return ``(B, dim)`` unit-length embeddings of ``(B, text_dim)`` pooled features."""
        return F.normalize(self.text_proj(pooled_text.to(self.text_proj.weight.dtype)), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """The inverse temperature, capped at :data:`MAX_LOGIT_SCALE`."""
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(
        self, pooled_image: torch.Tensor, pooled_text: torch.Tensor, present: torch.Tensor
    ) -> JointEmbeddings:
        """Return a batch's :class:`JointEmbeddings`."""
        return JointEmbeddings(
            self.image(pooled_image), self.text(pooled_text), present, self.logit_scale()
        )
