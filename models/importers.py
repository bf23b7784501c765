"""The field's own checkpoints as model packages: torchxrayvision's weights files and CheXNet.

A site downloads a published checkpoint elsewhere (nothing here touches the network) and
imports it once; the package it gets is an ordinary one, loaded by
:func:`models.package.load_package` and served by the node like any other:

- torchxrayvision (Cohen et al., MIDL 2022): its DenseNet-121 files (``densenet121-res224-*``)
  are whole pickled ``xrv.models.DenseNet`` modules, its ResNet-50 file
  (``resnet50-res512-all``) is the state dict of a one-channel torchvision ResNet-50. The
  weights name says which pathologies the 18 outputs are, the input resolution and the
  operating thresholds; all three come from the installed library's ``model_urls``. The input
  is the library's: one channel scaled to [-1024, 1024] (mean 0.5, std 1/2048 on the node's
  [0, 1] display image), centre crop, scikit-image resize.
- CheXNet (Rajpurkar et al., 2017) as arnoweng/CheXNet publishes it: ``model.pth.tar``, a dict
  whose ``state_dict`` is that of ``DataParallel(DenseNet121)``, i.e. torchvision's
  DenseNet-121 with ``classifier = Sequential(Linear(1024, 14), Sigmoid())``, keys
  ``module.densenet121.*`` with the old ``norm.1`` layer names.

Thresholds: the node serves each output's sigmoid as its probability and calls a finding
present at ``probability >= threshold``. torchxrayvision's ``op_threshs`` become those
thresholds, so the node's calls are the library's (its ``op_norm`` maps the threshold to 0.5
and is monotonic) while the probability shown stays the model's own. Outputs the library gives
no name or no operating threshold for (tasks the weights were not trained on) are left out.

Checkpoints are unpickled through an allowlist (tensor types and containers, as
``torch.load(weights_only=True)`` allows them, and the library's and torch's layer classes), so
a file cannot run code when it is imported; ``weights_only=True`` itself cannot read a whole
module saved in torch's legacy format, as the DenseNet releases are.
Every import checks that the package computes what the library's own model computes on a probe
input before it writes anything.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import math
import pickle
import re
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch._weights_only_unpickler import _get_allowed_globals as _torch_safe_globals
from torchvision import models as tv

from models.errors import ModelPackageError
from models.labels import CHEXPERT_14, LOCAL_SCHEME, NIH_CHESTXRAY14, VOCABULARIES, Label
from models.network import CxrClassifier, build_model
from models.package import LabelConfig, ModelConfig, save_package
from models.preprocess import PreprocessSpec, to_model_input

__all__ = [
    "CHEXNET_LABELS",
    "SOURCES",
    "XrvWeights",
    "import_chexnet",
    "import_torchxrayvision",
    "xrv_label",
    "xrv_weights",
]

SOURCES = ("torchxrayvision", "chexnet")
# torchxrayvision's [-1024, 1024] from the node's [0, 1] display: (x - 0.5) * 2048.
XRV_MEAN, XRV_STD = (0.5,), (1.0 / 2048.0,)
# arnoweng/CheXNet model.py CLASS_NAMES: the order of the checkpoint's 14 outputs.
CHEXNET_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
_DENSENET_FEATURES = 1024
# torchvision < 0.3 named a dense layer's parts "norm.1", "conv.2"...: CheXNet's keys.
_OLD_DENSENET_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
_RESNET_PARTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
# The package must compute what the library's model computes; float32 reorderings only.
_PROBE_TOLERANCE = 1e-4
_XRV_ENCODERS = {"densenet121-": "densenet121", "resnet50-": "resnet50"}
_XRV_SOURCE = "https://github.com/mlmed/torchxrayvision"
_CHEXNET_SOURCE = "https://github.com/arnoweng/CheXNet"


@dataclass(frozen=True)
class XrvWeights:
    """What torchxrayvision says about one of its weights files.

    Attributes
    ----------
    name : str
        The ``weights`` name (``"densenet121-res224-all"``).
    encoder : str
        The node's image encoder for it: ``"densenet121"`` or ``"resnet50"``.
    outputs : tuple of str
        The pathology of each of the file's outputs, ``""`` for an untrained one.
    op_threshs : tuple of float
        The library's operating threshold of each output, NaN where it has none.
    resolution : int
        Input side in pixels.
    url : str
        Where the library downloads the file from; its basename is the file's name.
    description : str
        The library's description, if it has one.
    """

    name: str
    encoder: str
    outputs: tuple[str, ...]
    op_threshs: tuple[float, ...]
    resolution: int
    url: str
    description: str

    @property
    def file_name(self) -> str:
        """The released file's name."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def kept(self) -> tuple[int, ...]:
        """Indices of the outputs the package serves: named, with an operating threshold."""
        return tuple(
            index
            for index, (name, threshold) in enumerate(
                zip(self.outputs, self.op_threshs, strict=True)
            )
            if name and not math.isnan(threshold)
        )


def _xrv() -> Any:
    # Importing torchxrayvision calls warnings.filterwarnings("ignore") for the whole process;
    # keep the node's own warning filters as they were.
    with warnings.catch_warnings():
        import torchxrayvision

    return torchxrayvision


def xrv_weights(name: str) -> XrvWeights:
    """Look up one of torchxrayvision's weights names in the installed library.

    Parameters
    ----------
    name : str
        A ``densenet121-*`` or ``resnet50-*`` key of ``torchxrayvision.models.model_urls``.

    Returns
    -------
    XrvWeights

    Raises
    ------
    ValueError
        If the library has no such weights, or they are not a DenseNet-121 or ResNet-50.
    """
    urls = _xrv().models.model_urls
    known = sorted(key for key in urls if key.startswith(tuple(_XRV_ENCODERS)))
    if name not in known:
        raise ValueError(f"unknown torchxrayvision weights {name!r}; known: {known}")
    entry = urls[name]
    encoder = next(value for prefix, value in _XRV_ENCODERS.items() if name.startswith(prefix))
    outputs = tuple(str(label) for label in entry["labels"])
    thresholds = entry.get("op_threshs") or [math.nan] * len(outputs)
    return XrvWeights(
        name=name,
        encoder=encoder,
        outputs=outputs,
        op_threshs=tuple(float(value) for value in thresholds),
        resolution=int(entry.get("input_resolution", 224)),
        url=str(entry["weights_url"]),
        description=str(entry.get("description", "")),
    )


def xrv_label(name: str) -> Label:
    """The coded label of a torchxrayvision pathology name.

    The NIH ChestX-ray14 names take that vocabulary's codes, the CheXpert ones (``Lung
    Lesion``, ``Lung Opacity``, ``Fracture``, ``Enlarged Cardiomediastinum``) CheXpert's; a
    name in neither gets a local ``99CXR`` code ``XRV_<NAME>``.
    """
    for vocabulary in (NIH_CHESTXRAY14, CHEXPERT_14):
        for label in vocabulary:
            if label.name == name:
                return label
    code = "XRV_" + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
    return Label(name, code[:16], LOCAL_SCHEME, name[:64])


def import_torchxrayvision(file: str | Path, weights: str, out: str | Path) -> ModelConfig:
    """Turn a torchxrayvision weights file into a model package.

    Parameters
    ----------
    file : str or pathlib.Path
        The downloaded file: for ``densenet121-*`` the library's pickled module (or its state
        dict), for ``resnet50-*`` the state dict.
    weights : str
        The library's name for these weights (``"densenet121-res224-all"``); it decides the
        labels, thresholds and resolution, so it must be the file's.
    out : str or pathlib.Path
        Package directory to create (must not exist or be empty).

    Returns
    -------
    ModelConfig
        The config as written.

    Raises
    ------
    ValueError
        If the weights name is unknown, the file is the release file of other weights, or
        its tensors do not fit the library's architecture.
    ModelPackageError
        If the file cannot be read safely, or the package does not reproduce the library.
    FileNotFoundError
        If ``file`` does not exist.
    """
    spec = xrv_weights(weights)
    path = _existing(file)
    other = _release_of_other_weights(path.name, spec)
    if other:
        raise ValueError(
            f"{path.name} is torchxrayvision's release file of {other!r}, not of {weights!r}: "
            "its outputs would get the wrong labels and thresholds"
        )
    library = _xrv_library_model(spec)
    _load_into(library, _xrv_state_dict(path, spec), f"torchxrayvision {weights}")
    vocabulary, rows = _serving_order(spec)
    node = _node_model(spec.encoder, len(rows), in_channels=1)
    head = library.classifier if spec.encoder == "densenet121" else library.fc
    _copy_backbone(library, node, spec.encoder)
    _copy_head(head, node, rows)
    preprocessing = PreprocessSpec(
        image_size=spec.resolution,
        channels=1,
        mean=XRV_MEAN,
        std=XRV_STD,
        crop="center",
        resize="skimage",
    )
    _check_reproduces(_xrv_probabilities(library, spec), node, rows, preprocessing, weights)
    labels = tuple(
        LabelConfig.from_label(xrv_label(spec.outputs[i]), spec.op_threshs[i]) for i in rows
    )
    version = _xrv().__version__
    config = ModelConfig(
        name=f"xrv-{weights}",
        version=f"torchxrayvision-{version}",
        architecture=dict(node.architecture),
        preprocessing=preprocessing,
        labels=labels,
        trained=True,
        disclaimer=(
            f"Research model (torchxrayvision {weights}, imported), not a medical device: "
            "every result requires review by a radiologist"
        ),
        training_data=_xrv_training_data(spec),
        label_vocabulary=vocabulary,
    )
    card = _xrv_card(spec, path, version, labels)
    return save_package(node, config, out, card)


def import_chexnet(file: str | Path, out: str | Path) -> ModelConfig:
    """Turn a CheXNet-style DenseNet-121 NIH ChestX-ray14 checkpoint into a model package.

    Parameters
    ----------
    file : str or pathlib.Path
        arnoweng/CheXNet's ``model.pth.tar`` (a dict with ``state_dict``), or a state dict of
        the same model, with or without the ``module.`` prefix and old layer names.
    out : str or pathlib.Path
        Package directory to create (must not exist or be empty).

    Returns
    -------
    ModelConfig
        The config as written. Outputs are in the ``nih-chestxray14`` vocabulary's order.

    Raises
    ------
    ValueError
        If the tensors do not fit CheXNet's architecture.
    ModelPackageError
        If the file cannot be read safely, or the package does not reproduce the model.
    FileNotFoundError
        If ``file`` does not exist.
    """
    path = _existing(file)
    library = _chexnet_reference_model()
    state = _chexnet_state_dict(path)
    _load_into(library, state, "CheXNet's DenseNet-121")
    order = [CHEXNET_LABELS.index(label.name) for label in NIH_CHESTXRAY14]
    node = _node_model("densenet121", len(order), in_channels=3)
    _copy_backbone(library, node, "densenet121")
    _copy_head(library.classifier[0], node, order)
    preprocessing = PreprocessSpec(image_size=224, channels=3)
    _check_reproduces(library, node, order, preprocessing, "CheXNet")
    labels = tuple(LabelConfig.from_label(label) for label in NIH_CHESTXRAY14)
    config = ModelConfig(
        name="chexnet-densenet121-nih14",
        version="arnoweng",
        architecture=dict(node.architecture),
        preprocessing=preprocessing,
        labels=labels,
        trained=True,
        disclaimer=(
            "Research model (CheXNet reimplementation, imported), not a medical device; its "
            "thresholds are not calibrated: every result requires review by a radiologist"
        ),
        training_data=(
            "NIH ChestX-ray14 (NIH Clinical Center; Wang et al., CVPR 2017), 70/10/20 split "
            f"of {_CHEXNET_SOURCE}"
        ),
        label_vocabulary="nih-chestxray14",
    )
    return save_package(node, config, out, _chexnet_card(path))


# Reading checkpoints ----------------------------------------------------------------------


def _existing(file: str | Path) -> Path:
    path = Path(file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _serving_order(spec: XrvWeights) -> tuple[str, list[int]]:
    """The outputs the package serves, in the order of the one vocabulary whose labels they
    are, if any (so that ``cxrnode evaluate`` can measure it on that vocabulary's data)."""
    names = [spec.outputs[i] for i in spec.kept]
    for vocabulary, labels in VOCABULARIES.items():
        if sorted(label.name for label in labels) == sorted(names):
            return vocabulary, [spec.outputs.index(label.name) for label in labels]
    return "", list(spec.kept)


def _release_of_other_weights(file_name: str, spec: XrvWeights) -> str:
    if file_name == spec.file_name:
        return ""
    for name in _xrv().models.model_urls:
        if name.startswith(tuple(_XRV_ENCODERS)) and xrv_weights(name).file_name == file_name:
            return name
    return ""


def _safe_load(path: Path, layers: list[Any]) -> Any:
    """``torch.load`` through an unpickler that resolves only tensor types and containers
    (the globals ``weights_only=True`` allows) and ``layers``; any other global is refused
    before anything of the file runs. ``weights_only=True`` itself cannot read the released
    DenseNets: whole modules saved in torch's legacy format, which records each layer class's
    source as a persistent id that only a full unpickler accepts."""
    allowed = dict(_torch_safe_globals())
    allowed.update((f"{layer.__module__}.{layer.__qualname__}", layer) for layer in layers)
    try:
        with warnings.catch_warnings():
            # The layer source recorded in a legacy file is the library's of years ago.
            warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
            return torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(allowed)
            )
    except Exception as exc:  # unpickling refused or failed: same meaning to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelPackageError(
            f"cannot read {path} as a checkpoint of tensors and known layers: {first}"
        ) from exc


class _AllowlistUnpickler(pickle.Unpickler):
    """An unpickler whose globals are looked up in ``allowed`` and nowhere else."""

    allowed: Mapping[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (``__builtin__.set``), as protocol-2 pickles may carry them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self.allowed.get(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not a tensor type, container or known layer: refused"
            )
        return found


def _pickle_module(allowed: Mapping[str, Any]) -> types.ModuleType:
    """A stand-in for the ``pickle`` module that ``torch.load`` unpickles with."""
    unpickler = type("Unpickler", (_AllowlistUnpickler,), {"allowed": dict(allowed)})

    def load(file: Any, **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    module = types.ModuleType("cxrnode_allowlist_pickle")
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    return module


def _xrv_layer_classes() -> list[Any]:
    """What a pickled torchxrayvision DenseNet may name: its classes (and torchvision's of the
    same names), torch's layers, and the placeholder that modules pickled by torch < 1.5 name
    for their ``_backend`` (which torch keeps for exactly that and which returns None)."""
    from torch.nn.backends.thnn import _get_thnn_function_backend
    from torchvision.models import densenet as tv_densenet

    xrv = _xrv()
    library = [xrv.models.DenseNet, xrv.models._DenseBlock, xrv.models._DenseLayer]
    library += [xrv.models._Transition, tv_densenet.DenseNet, tv_densenet._DenseBlock]
    library += [tv_densenet._DenseLayer, tv_densenet._Transition]
    torch_layers = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Linear]
    return [*library, *torch_layers, nn.Sequential, _get_thnn_function_backend]


def _xrv_state_dict(path: Path, spec: XrvWeights) -> dict[str, torch.Tensor]:
    loaded = _safe_load(path, _xrv_layer_classes() if spec.encoder == "densenet121" else [])
    if isinstance(loaded, nn.Module):
        loaded = _module_tensors(loaded)
    return _tensor_dict(loaded, path)


def _module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A pickled module's parameters and buffers by state-dict name, read from the modules'
    own dicts: ``state_dict()`` would run whatever hooks the file set."""
    tensors = {}
    for prefix, child in module.named_modules():
        for name, tensor in (*child._parameters.items(), *child._buffers.items()):
            if isinstance(tensor, torch.Tensor):
                tensors[f"{prefix}.{name}" if prefix else name] = tensor.detach()
    return tensors


def _chexnet_state_dict(path: Path) -> dict[str, torch.Tensor]:
    loaded = _safe_load(path, [])
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    state = _tensor_dict(loaded, path)
    return {
        _OLD_DENSENET_KEY.sub(r"\1\2.", _strip(key, ("module.", "densenet121."))): value
        for key, value in state.items()
    }


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _tensor_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping) or not loaded:
        raise ModelPackageError(f"{path} holds {type(loaded).__name__}, not a model's tensors")
    tensors = {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if len(tensors) != len(loaded):
        raise ModelPackageError(f"{path} holds values other than tensors beside its weights")
    return tensors


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    # BatchNorm's batch counter is unused at inference and absent from files saved by torch
    # < 0.4.1 (CheXNet's); its absence must not refuse a file whose weights are all there.
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"the file does not fit {what}: {len(missing)} tensors missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(wrong)} of another shape {wrong[:3]}"
        )
    model.load_state_dict(state)
    model.eval()


# The library's models and the node's --------------------------------------------------------


def _xrv_library_model(spec: XrvWeights) -> nn.Module:
    """The library's architecture for the weights, without downloading anything."""
    n_outputs = len(spec.outputs)
    if spec.encoder == "densenet121":
        return _xrv().models.DenseNet(weights=None, num_classes=n_outputs, in_channels=1)
    # xrv.models.ResNet downloads in its constructor; this is what it builds before that.
    model = tv.resnet50(num_classes=n_outputs, weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _chexnet_reference_model() -> nn.Module:
    """arnoweng/CheXNet's DenseNet121, less its DataParallel wrapper."""
    model = tv.densenet121(weights=None)
    model.classifier = nn.Sequential(
        nn.Linear(_DENSENET_FEATURES, len(CHEXNET_LABELS)), nn.Sigmoid()
    )
    return model


def _node_model(encoder: str, n_labels: int, in_channels: int) -> CxrClassifier:
    architecture = {
        "image_encoder": encoder,
        "image_weights": None,
        "text_encoder": {"kind": "none"},
        "hidden_dim": 0,  # the head is the checkpoint's one linear layer
        "dropout": 0.0,
    }
    return build_model(architecture, n_labels, in_channels=in_channels).eval()


def _copy_backbone(library: nn.Module, node: CxrClassifier, encoder: str) -> None:
    body = node.image_encoder.body
    if encoder == "densenet121":
        body.features.load_state_dict(library.features.state_dict())
        return
    for part in _RESNET_PARTS:
        getattr(body, part).load_state_dict(getattr(library, part).state_dict())


def _copy_head(linear: nn.Linear, node: CxrClassifier, rows: tuple[int, ...] | list[int]) -> None:
    index = torch.tensor(list(rows), dtype=torch.long)
    with torch.no_grad():
        node.output_layer.weight.copy_(linear.weight[index])
        node.output_layer.bias.copy_(linear.bias[index])


def _xrv_probabilities(library: nn.Module, spec: XrvWeights) -> Any:
    # The library's forward less op_norm (the node thresholds the sigmoid instead).
    if spec.encoder == "densenet121":
        return lambda x: torch.sigmoid(library.classifier(library.features2(x)))
    return lambda x: torch.sigmoid(library(x))


def _check_reproduces(
    library_probabilities: Any,
    node: CxrClassifier,
    rows: tuple[int, ...] | list[int],
    spec: PreprocessSpec,
    what: str,
) -> None:
    # A random image through the package's own preprocessing: an input in the model's range.
    generator = np.random.default_rng(0)
    probe = to_model_input(generator.random((spec.image_size + 40, spec.image_size)), spec)[None]
    with torch.no_grad():
        expected = library_probabilities(probe)[:, list(rows)]
        actual = torch.sigmoid(node(probe))
    if not torch.allclose(actual, expected, atol=_PROBE_TOLERANCE, rtol=_PROBE_TOLERANCE):
        gap = float((actual - expected).abs().max())
        raise ModelPackageError(
            f"the imported {what} package does not reproduce the original model "
            f"(largest probability difference {gap:.2e} on a probe input); nothing was written"
        )


# Provenance -------------------------------------------------------------------------------

# mlmed/torchxrayvision BENCHMARKS.md ("results updated 07/23/2023"): AUROC on 20% of each
# dataset, by the library's scripts/model_calibrate.py.
_XRV_BENCHMARKS: dict[str, dict[str, str]] = {
    "densenet121-res224-all": {
        "NIH ChestX-ray14": "Atelectasis 0.76, Cardiomegaly 0.88, Consolidation 0.77, Edema 0.85, "
        "Effusion 0.85, Emphysema 0.73, Fibrosis 0.72, Hernia 0.91, Infiltration 0.68, "
        "Mass 0.80, Nodule 0.69, Pleural_Thickening 0.74, Pneumonia 0.71, Pneumothorax 0.75",
        "RSNA Pneumonia": "Lung Opacity 0.88, Pneumonia 0.86",
        "SIIM-ACR": "Pneumothorax 0.79",
        "CheXpert": "Atelectasis 0.91, Cardiomegaly 0.91, Consolidation 0.90, Edema 0.92, "
        "Enlarged Cardiomediastinum 0.78, Fracture 0.74, Lung Lesion 0.84, Lung Opacity 0.87, "
        "Effusion 0.94, Pneumonia 0.84, Pneumothorax 0.85",
    },
    "resnet50-res512-all": {
        "NIH ChestX-ray14": "Atelectasis 0.78, Cardiomegaly 0.90, Consolidation 0.78, Edema 0.89, "
        "Effusion 0.86, Emphysema 0.88, Fibrosis 0.76, Hernia 0.92, Infiltration 0.69, "
        "Mass 0.82, Nodule 0.76, Pleural_Thickening 0.76, Pneumonia 0.71, Pneumothorax 0.84",
        "RSNA Pneumonia": "Lung Opacity 0.85, Pneumonia 0.87",
        "SIIM-ACR": "Pneumothorax 0.91",
        "CheXpert": "Atelectasis 0.63, Cardiomegaly 0.84, Consolidation 0.74, Edema 0.79, "
        "Fracture 0.58, Lung Opacity 0.71, Effusion 0.81, Pneumonia 0.67, Pneumothorax 0.61",
    },
}
_XRV_DATASETS = {
    "all": "NIH ChestX-ray14, PadChest, CheXpert, MIMIC-CXR, Google (NIH labels), Open-i, "
    "RSNA Pneumonia",
    "nih": "NIH ChestX-ray14",
    "pc": "PadChest",
    "chex": "CheXpert",
    "rsna": "RSNA Pneumonia Detection Challenge (Kaggle)",
    "mimic_nb": "MIMIC-CXR (NegBio labels)",
    "mimic_ch": "MIMIC-CXR (CheXpert labeler)",
}
# CheXNet AUROCs on NIH ChestX-ray14 test splits: Rajpurkar et al. 2017 (arXiv:1711.05225)
# Table 1, and arnoweng/CheXNet's README ("Our Implemented CheXNet", ten-crop test).
_CHEXNET_AUROC = {
    "Atelectasis": ("0.8094", "0.8294"),
    "Cardiomegaly": ("0.9248", "0.9165"),
    "Effusion": ("0.8638", "0.8870"),
    "Infiltration": ("0.7345", "0.7143"),
    "Mass": ("0.8676", "0.8597"),
    "Nodule": ("0.7802", "0.7873"),
    "Pneumonia": ("0.7680", "0.7745"),
    "Pneumothorax": ("0.8887", "0.8726"),
    "Consolidation": ("0.7901", "0.8142"),
    "Edema": ("0.8878", "0.8932"),
    "Emphysema": ("0.9371", "0.9254"),
    "Fibrosis": ("0.8047", "0.8304"),
    "Pleural_Thickening": ("0.8062", "0.7831"),
    "Hernia": ("0.9164", "0.9104"),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _xrv_training_data(spec: XrvWeights) -> str:
    if spec.encoder == "resnet50":
        return "PadChest, NIH ChestX-ray14, RSNA Pneumonia, SIIM-ACR, VinDr-CXR at 512 px"
    key = spec.name.removeprefix("densenet121-res224-")
    return _XRV_DATASETS.get(key, spec.description or spec.name)


def _xrv_card(spec: XrvWeights, path: Path, version: str, labels: tuple[LabelConfig, ...]) -> str:
    dropped = [
        f"{i} ({spec.outputs[i] or 'unnamed'})"
        for i in range(len(spec.outputs))
        if i not in spec.kept
    ]
    scores = _XRV_BENCHMARKS.get(spec.name)
    score_lines = (
        [
            "mlmed/torchxrayvision BENCHMARKS.md (results of 07/23/2023, on 20% of each "
            "dataset, some of which the weights were trained on):",
            *(f"- {dataset}: {values}" for dataset, values in scores.items()),
        ]
        if scores
        else [
            "torchxrayvision's BENCHMARKS.md lists no scores for these weights; see Cohen et "
            'al., "On the limits of cross-domain generalization in automated X-ray '
            'prediction", MIDL 2020 (arXiv:2002.02497) for the single-dataset models.'
        ]
    )
    label_lines = [
        f"- {label.name}: {label.coding_scheme} {label.code_value} ({label.code_meaning}), "
        f"threshold {label.threshold:.6g}"
        for label in labels
    ]
    return "\n".join(
        [
            f"# xrv-{spec.name}",
            "",
            f"torchxrayvision's `{spec.name}` weights ({_XRV_SOURCE}; Cohen et al., "
            '"TorchXRayVision: A library of chest X-ray datasets and models", MIDL 2022, '
            "arXiv:2111.00595), imported unchanged by `cxrnode import-model torchxrayvision`.",
            "",
            "## Source",
            f"- File: `{path.name}`, sha256 `{_sha256(path)}`; released at {spec.url}",
            f"- Labels, operating thresholds and resolution: torchxrayvision {version} "
            "`model_urls`",
            "- Licence: torchxrayvision is Apache-2.0; the weights are released in its "
            "repository, which states no separate terms for them. The training datasets keep "
            "their own (CheXpert and MIMIC-CXR are research-use only).",
            f"- Training data: {_xrv_training_data(spec)}",
            "",
            "## Input",
            f"One channel, [-1024, 1024] (the library's `normalize`), centre square crop, "
            f"scikit-image resize to {spec.resolution} px (the library's `XRayCenterCrop` and "
            "`XRayResizer`). The node windows the DICOM first (modality LUT, VOI LUT or window, "
            "MONOCHROME1 inverted): the models were trained on windowed 8-bit exports, whereas "
            "the library's `read_xray_dcm` scales raw stored values by their bit depth.",
            "",
            "## Outputs and thresholds",
            "Probabilities are the model's sigmoid outputs; a finding is present at or above "
            "the library's `op_threshs` value, so the node's calls are the library's "
            "(`op_norm` output >= 0.5).",
            *label_lines,
            f"- Left out (no name or no operating threshold in the library): "
            f"{', '.join(dropped) if dropped else 'none'}",
            "",
            "## Published scores (AUROC)",
            *score_lines,
            "",
            "## Limits",
            "Not a medical device. The weights were not validated at this site: measure them on "
            "local studies before relying on any threshold.",
            "",
        ]
    )


def _chexnet_card(path: Path) -> str:
    rows = [
        f"| {name} | {paper} | {reimplementation} |"
        for name, (paper, reimplementation) in _CHEXNET_AUROC.items()
    ]
    return "\n".join(
        [
            "# chexnet-densenet121-nih14",
            "",
            'A CheXNet-style DenseNet-121 (Rajpurkar et al., "CheXNet: Radiologist-Level '
            'Pneumonia Detection on Chest X-Rays with Deep Learning", arXiv:1711.05225) for '
            f"the 14 NIH ChestX-ray14 labels, as published by {_CHEXNET_SOURCE} "
            "(`model.pth.tar`), imported unchanged by `cxrnode import-model chexnet`.",
            "",
            "## Source",
            f"- File: `{path.name}`, sha256 `{_sha256(path)}`",
            "- Licence: the repository's README states none; ask its authors before any use "
            "beyond research. NIH ChestX-ray14: no restrictions on use, with attribution.",
            "",
            "## Input",
            "Three channels (the gray image replicated), ImageNet mean/std, the whole image "
            "resized to 224 x 224, as the CheXNet paper describes. arnoweng's evaluation "
            "instead resizes to 256 and averages ten 224 crops: the node scores one pass.",
            "",
            "## Outputs and thresholds",
            "Outputs are reordered from the checkpoint's order to the `nih-chestxray14` "
            "vocabulary's (codes there). Neither source publishes operating thresholds: every "
            "threshold is 0.5, a placeholder that calls few findings at NIH prevalences. "
            "Calibrate on local data before relying on any present/absent call.",
            "",
            "## Published scores (AUROC, NIH ChestX-ray14 test split)",
            "| Label | CheXNet paper, Table 1 | arnoweng reimplementation (README) |",
            "| --- | --- | --- |",
            *rows,
            "",
            "## Limits",
            "Not a medical device. The weights were not validated at this site.",
            "",
        ]
    )
