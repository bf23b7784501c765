"""Image encoders from torchvision: a batch of images to a ``(B, C, h, w)`` feature map.

Every encoder ends in a module whose output is that map, and that module is the Grad-CAM
target, so one Grad-CAM code path serves CNNs and transformers alike: the Swin transformer's
channels-last token grid is permuted back to ``(B, C, h, w)`` inside the encoder, which is the
reshape a transformer otherwise needs as Grad-CAM's ``reshape_transform``.

Nothing is downloaded. ImageNet initialisation reads a torchvision checkpoint the user has put
in the torch hub cache (``$TORCH_HOME/hub/checkpoints/<torchvision file name>``) or gives by
path; without one an encoder starts from scratch and a warning says so.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tv
from torchvision.ops import Permute

log = logging.getLogger(__name__)

IMAGENET = "imagenet"


@dataclass(frozen=True)
class _Spec:
    factory: Callable[..., nn.Module]
    weights: tv.WeightsEnum
    out_dim: int


IMAGE_ENCODERS: dict[str, _Spec] = {
    "resnet18": _Spec(tv.resnet18, tv.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet50": _Spec(tv.resnet50, tv.ResNet50_Weights.IMAGENET1K_V2, 2048),
    "densenet121": _Spec(tv.densenet121, tv.DenseNet121_Weights.IMAGENET1K_V1, 1024),
    "swin_t": _Spec(tv.swin_t, tv.Swin_T_Weights.IMAGENET1K_V1, 768),
}

# torchvision's DenseNet checkpoints still use the old "norm.1"-style layer names.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class ImageEncoder(nn.Module):
    """A torchvision backbone without its classifier: images to a ``(B, C, h, w)`` map.

    Parameters
    ----------
    name : str
        One of :data:`IMAGE_ENCODERS`.
    in_channels : int
        1 for gray input, 3 for the gray image replicated (as ImageNet encoders expect).
    state_dict : dict, optional
        A torchvision state dict of the full model (e.g. ImageNet weights) to start from.

    Attributes
    ----------
    out_dim : int
        Channels of the feature map (512, 2048, 1024, 768).
    pretrained : bool
        Whether ``state_dict`` initialised the encoder.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if name not in IMAGE_ENCODERS:
            raise ValueError(f"unknown image encoder {name!r}; known: {sorted(IMAGE_ENCODERS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, not {in_channels}")
        spec = IMAGE_ENCODERS[name]
        net = spec.factory(weights=None)
        if state_dict is not None:
            _load_backbone(net, name, state_dict)
        self.name = name
        self.out_dim = spec.out_dim
        self.pretrained = state_dict is not None
        self.body = _body(name, net)
        if in_channels == 1:
            _to_one_channel(self.body, name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, out_dim, h, w)`` feature map of ``(B, in_channels, H, W)`` images."""
        return self.body(images)

    def target_layer(self) -> nn.Module:
        """The module whose ``(B, C, h, w)`` output Grad-CAM weighs."""
        return self.body[-1]


def _body(name: str, net: nn.Module) -> nn.Sequential:
    if name.startswith("resnet"):
        parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return nn.Sequential(OrderedDict((part, getattr(net, part)) for part in parts))
    if name.startswith("densenet"):
        # torchvision applies this ReLU in DenseNet.forward, not as a module; make it one so
        # that Grad-CAM hooks the same rectified activations the pooling sees.
        return nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU()))
    # Swin: stages, final LayerNorm on (B, h, w, C) tokens, then back to (B, C, h, w).
    return nn.Sequential(
        OrderedDict(features=net.features, norm=net.norm, permute=Permute([0, 3, 1, 2]))
    )


def _first_conv(body: nn.Sequential, name: str) -> tuple[nn.Module, str]:
    if name.startswith("resnet"):
        return body, "conv1"
    if name.startswith("densenet"):
        return body.features, "conv0"
    return body.features[0], "0"


def _to_one_channel(body: nn.Sequential, name: str) -> None:
    """Replace the first convolution by a one-channel one that sees a gray image as the
    three-channel one saw it replicated: its weights are the sum over the colour channels."""
    parent, attribute = _first_conv(body, name)
    conv: nn.Conv2d = getattr(parent, attribute)
    gray = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    setattr(parent, attribute, gray)


def _load_backbone(net: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    # The classifier is dropped anyway, so a checkpoint without one is as good.
    try:
        result = net.load_state_dict(_torchvision_keys(name, state), strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"weights do not fit torchvision {name}: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "classifier.", "head."))]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights do not fit torchvision {name}: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


def _torchvision_keys(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not name.startswith("densenet"):
        return state
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        match = _DENSENET_OLD_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # module versions, which BatchNorm reads to load old checkpoints
        renamed._metadata = metadata  # type: ignore[attr-defined]
    return renamed


def imagenet_checkpoint(name: str) -> Path:
    """Return where torchvision would cache the encoder's ImageNet checkpoint.

    Parameters
    ----------
    name : str
        One of :data:`IMAGE_ENCODERS`.

    Returns
    -------
    pathlib.Path
        ``<torch hub dir>/checkpoints/<file name of torchvision's weights URL>``; it may not
        exist.
    """
    if name not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder {name!r}; known: {sorted(IMAGE_ENCODERS)}")
    filename = Path(urlparse(IMAGE_ENCODERS[name].weights.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def read_image_weights(name: str, source: str | None) -> dict[str, torch.Tensor] | None:
    """Read the starting weights an architecture asks for, never downloading.

    Parameters
    ----------
    name : str
        The encoder, one of :data:`IMAGE_ENCODERS`.
    source : str or None
        ``None`` (from scratch), ``"imagenet"`` (torchvision's checkpoint from the torch hub
        cache, if the user put it there) or the path of a torchvision state-dict file.

    Returns
    -------
    dict or None
        The state dict, or ``None`` to start from scratch (also when ``"imagenet"`` is asked
        for and not cached: a warning says so).

    Raises
    ------
    FileNotFoundError
        If an explicit path does not exist.
    ValueError
        If the file holds no state dict.
    """
    if source is None:
        return None
    if source == IMAGENET:
        path = imagenet_checkpoint(name)
        if not path.is_file():
            log.warning(
                "no ImageNet weights for %s at %s (nothing is downloaded): the image encoder "
                "starts from scratch",
                name,
                path,
            )
            return None
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image encoder weights {path} do not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a torchvision state dict")
    log.info("image encoder %s initialised from %s", name, path)
    return state
