"""Grad-CAM (Selvaraju et al., 2017) on the image branch, batched and on the model's device.

Each row of a batch is explained for its own label, so several labels of one image and labels
of several images share one forward and one backward pass. The formula is that of the
``grad-cam`` package's ``GradCAM`` (channel weights = spatial mean of the gradients; map =
ReLU of the weighted sum of activations; each map scaled to [0, 1] by its own minimum and
maximum) and the tests hold the two equal; unlike the package, activations, gradients and
maps stay on the model's device as tensors, so a GPU never waits for a copy to the CPU and a
NumPy/OpenCV resize.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# The grad-cam package's scale_cam_image divides by max + 1e-7 too.
_EPSILON = 1e-7


def grad_cam(
    forward: Callable[[torch.Tensor], torch.Tensor],
    target_layer: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Return one Grad-CAM map per row, for that row's label, at the target layer's grid.

    Parameters
    ----------
    forward : callable
        Images to ``(N, n_labels)`` logits; ``target_layer`` must run inside it and output a
        ``(N, C, h, w)`` map.
    target_layer : torch.nn.Module
        The layer whose activations are weighed.
    images : torch.Tensor
        ``(N, C, H, W)`` model inputs. The model's weights need not require gradients: the
        input is made to, which puts the activations on a differentiable path.
    labels : torch.Tensor
        ``(N,)`` label index per row.

    Returns
    -------
    torch.Tensor
        ``(N, h, w)`` float32 maps in [0, 1] on ``images.device``, detached.

    Raises
    ------
    ValueError
        If the target layer did not run or gave no ``(N, C, h, w)`` map.
    """
    captured: list[torch.Tensor] = []
    handle = target_layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = forward(images.detach().requires_grad_(True))
            if len(captured) != 1 or captured[0].ndim != 4:
                raise ValueError("Grad-CAM target layer must run once and give a (N, C, h, w) map")
            activations = captured[0]
            score = logits.gather(1, labels.view(-1, 1).to(logits.device)).sum()
            (gradients,) = torch.autograd.grad(score, activations)
    finally:
        handle.remove()
    activations, gradients = activations.detach().float(), gradients.float()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * activations).sum(dim=1))
    cams = cams - cams.amin(dim=(1, 2), keepdim=True)
    return cams / (cams.amax(dim=(1, 2), keepdim=True) + _EPSILON)
