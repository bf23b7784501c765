"""The one preprocessing truth: DICOM pixels to a display image, display image to model input.

Serving and training both call these functions. Any other route from pixels to tensors is a
training/serving skew waiting to happen, which in this field is a silent clinical bug. Report
text has its one route too, :func:`models.text.clean_report_text`, re-exported here.

The pipeline follows the DICOM grayscale pipeline (PS3.3 C.11): modality LUT, then VOI LUT,
then the presentation polarity, so that the display is what a radiologist would see: bright means
dense, whatever the photometric interpretation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from models.errors import PreprocessingError
from models.pixel_limits import PixelLimitError, check_decodable
from models.text import clean_report_text

__all__ = [
    "CROPS",
    "GRAY_MEAN",
    "GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "RESIZES",
    "PreprocessSpec",
    "clean_report_text",
    "crop_region",
    "decode_pixels",
    "dicom_to_display",
    "exported_image_to_display",
    "image_file_to_display",
    "pixels_to_display",
    "to_model_input",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The ImageNet statistics averaged over channels, for single-channel models.
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)

# "center": the central square of the image, as torchxrayvision's XRayCenterCrop cuts it.
CROPS = ("none", "center")
# "bilinear": antialiased bilinear on the display image, then normalisation. "skimage":
# normalisation, then scikit-image's resize (order 1, Gaussian anti-aliasing when shrinking,
# zero beyond the edges), as torchxrayvision's XRayResizer does.
RESIZES = ("bilinear", "skimage")
# Where a package's mean/std came from, as its config and model card name it. Serving reads only
# the mean and std; the name says how training chose them (training.normalization):
# "fixed" (the config's or the preset's values), "imagenet" (those the encoder's ImageNet
# weights were trained with), "train_stats" (the training split's per-channel statistics),
# "batch" (each training batch standardised by its own statistics, as seed 004; the training
# split's statistics at validation, test and serving).
NORMALIZATIONS = ("fixed", "imagenet", "train_stats", "batch")

ROBUST_PERCENTILES = (0.5, 99.5)
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R BT.601, as YBR_FULL
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a display image becomes a model input.

    Parameters
    ----------
    image_size : int
        Side of the square input, in pixels.
    channels : int
        1, or 3 (the gray image replicated, as ImageNet-pretrained encoders expect).
    mean, std : tuple of float
        Per-channel normalisation; ImageNet statistics by default.
    crop : str
        ``"none"`` (the whole image is resized to the square) or ``"center"`` (its central
        square of side min(rows, columns) is, as torchxrayvision's ``XRayCenterCrop``).
    resize : str
        ``"bilinear"`` (antialiased bilinear, then normalisation) or ``"skimage"``
        (normalisation, then ``skimage.transform.resize`` as torchxrayvision's
        ``XRayResizer``: the two differ at the edges, which the Gaussian filter pads with
        zeros after normalisation).
    """

    image_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    crop: str = "none"
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"PreprocessSpec.channels must be 1 or 3, not {self.channels}")
        if self.image_size < 16:
            raise ValueError(f"PreprocessSpec.image_size must be >= 16, not {self.image_size}")
        if not self.mean:
            object.__setattr__(self, "mean", IMAGENET_MEAN if self.channels == 3 else GRAY_MEAN)
        if not self.std:
            object.__setattr__(self, "std", IMAGENET_STD if self.channels == 3 else GRAY_STD)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("PreprocessSpec.mean and .std need one value per channel")
        if min(self.std) <= 0:
            raise ValueError("PreprocessSpec.std values must be positive")
        if self.crop not in CROPS:
            raise ValueError(f"PreprocessSpec.crop must be one of {CROPS}, not {self.crop!r}")
        if self.resize not in RESIZES:
            raise ValueError(f"PreprocessSpec.resize must be one of {RESIZES}, not {self.resize!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain JSON-ready values.

        ``crop`` and ``resize`` are written only when they are not the defaults, so that a
        package using the defaults stays readable by a node that predates them, and one that
        does not is refused there (unknown key) rather than served with the wrong input.
        """
        data: dict[str, Any] = {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.crop != CROPS[0]:
            data["crop"] = self.crop
        if self.resize != RESIZES[0]:
            data["resize"] = self.resize
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Build a spec from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If a key is unknown or a value is invalid.
        """
        unknown = set(data) - {"image_size", "channels", "mean", "std", "crop", "resize"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        return cls(
            image_size=int(data.get("image_size", 224)),
            channels=int(data.get("channels", 3)),
            mean=tuple(data.get("mean", ())),
            std=tuple(data.get("std", ())),
            crop=str(data.get("crop", CROPS[0])),
            resize=str(data.get("resize", RESIZES[0])),
        )


def dicom_to_display(ds: Dataset) -> np.ndarray:
    """Decode a DICOM image into a display image: float32, 2-D, in [0, 1], bright = dense.

    Applies the modality LUT (rescale or LUT), then the VOI LUT (VOI LUT Sequence, else the
    first Window Center/Width pair, else a robust 0.5-99.5 percentile stretch), then inverts
    MONOCHROME1. Colour images (RGB, YBR, palette) become their luma. Of a multi-frame image
    only the first frame is used. Every transfer syntax the installed pydicom decoding plugins
    support is accepted; a dataset without File Meta is decoded with the encoding it was read
    with. The two halves, :func:`decode_pixels` and :func:`pixels_to_display`, may be called
    apart (e.g. to time them).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image instance, as read by ``pydicom.dcmread``.

    Returns
    -------
    numpy.ndarray
        ``(Rows, Columns)`` float32 array in [0, 1].

    Raises
    ------
    PreprocessingError
        If there is no pixel data, it cannot be decoded, or it is not a 2-D image.
    """
    return pixels_to_display(ds, *decode_pixels(ds))


def decode_pixels(ds: Dataset, max_bytes: int | None = None) -> tuple[np.ndarray, str]:
    """The first frame's stored values, decompressed, and its photometric interpretation.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image instance.
    max_bytes : int, optional
        The most its pixel data may take once decoded, checked from its headers before any
        decoding (:func:`models.pixel_limits.check_decodable`); no limit when None.

    Raises
    ------
    PreprocessingError
        If there is no pixel data or it cannot be decoded; a
        :class:`models.pixel_limits.PixelLimitError` when it is over ``max_bytes`` or holds
        less than its header declares.
    """
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise PreprocessingError("dataset has no PixelData: not an image")
    syntax = _transfer_syntax(ds)
    if max_bytes is not None:
        check_decodable(ds, max_bytes, syntax)
    try:
        # index=0 decodes only the first frame, which is all we use of a multi-frame image.
        pixels, properties = get_decoder(syntax).as_array(ds, index=0)
    except Exception as exc:  # any decoder failure means the same thing to the caller
        raise PreprocessingError(f"cannot decode pixel data ({syntax.name}): {exc}") from exc
    photometric = str(
        properties.get("photometric_interpretation") or ds.get("PhotometricInterpretation", "")
    ).upper()
    return pixels, photometric


def pixels_to_display(ds: Dataset, pixels: np.ndarray, photometric: str) -> np.ndarray:
    """Decoded pixels (:func:`decode_pixels`) to the display image of :func:`dicom_to_display`.

    Raises
    ------
    PreprocessingError
        If the pixels are not a 2-D image.
    """
    if photometric == "PALETTE COLOR":
        pixels, photometric = apply_color_lut(pixels, ds), "RGB"
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        display = _luma(pixels, photometric)
    elif pixels.ndim == 2:
        display = _monochrome(pixels, ds)
    else:
        raise PreprocessingError(f"pixel data is not a 2-D image (decoded shape {pixels.shape})")

    if photometric == "MONOCHROME1":
        display = 1.0 - display
    return np.ascontiguousarray(np.clip(display, 0.0, 1.0), dtype=np.float32)


def image_file_to_display(path: str | Path) -> np.ndarray:
    """Read an image file (DICOM, or a PNG/JPEG export) into a display image.

    DICOM files (with or without a preamble) go through :func:`dicom_to_display`. Other image
    files are taken as already windowed exports, as the public datasets distribute them (NIH
    ChestX-ray14, Open-i): colour becomes luma, values are scaled by the bit depth's maximum.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.

    Returns
    -------
    numpy.ndarray
        2-D float32 array in [0, 1].

    Raises
    ------
    PreprocessingError
        If the file cannot be read as an image.
    """
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom", "") or _has_dicom_preamble(path):
        try:
            return dicom_to_display(dcmread(path, force=True))
        except (InvalidDicomError, OSError, AttributeError, KeyError) as exc:
            raise PreprocessingError(f"{path.name}: not a readable DICOM image: {exc}") from exc
    try:
        return exported_image_to_display(path)
    except PreprocessingError as exc:
        raise PreprocessingError(f"{path.name}: {exc}") from exc


def exported_image_to_display(
    source: str | Path | BinaryIO, max_bytes: int | None = None
) -> np.ndarray:
    """Read a PNG/JPEG export (no DICOM) into a display image, as training reads them.

    The image is taken as already windowed: colour becomes luma, values are scaled by the bit
    depth's maximum (:func:`image_file_to_display` routes such files here).

    Parameters
    ----------
    source : str, pathlib.Path or binary file
        The image file, or its bytes as a file object.
    max_bytes : int, optional
        The most the decoded image may take (rows x columns x bands x bytes per band), checked
        from its header before it is decoded; no limit when None.

    Returns
    -------
    numpy.ndarray
        2-D float32 array in [0, 1].

    Raises
    ------
    PreprocessingError
        If it cannot be read as an image; a :class:`models.pixel_limits.PixelLimitError` when
        it would decode to more than ``max_bytes``.
    """
    try:
        with Image.open(source) as image:
            if max_bytes is not None:
                _check_export_size(image, max_bytes)
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float32) / 65535.0
            else:
                pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise PreprocessingError(f"not a readable image: {exc}") from exc
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)


def _check_export_size(image: Image.Image, max_bytes: int) -> None:
    columns, rows = image.size
    band_bytes = 2 if image.mode.startswith("I;16") else 4 if image.mode in ("I", "F") else 1
    decoded = rows * columns * len(image.getbands()) * band_bytes
    if decoded > max_bytes:
        raise PixelLimitError(
            "decoded",
            f"image would decode to {decoded / (1024 * 1024):.0f} MiB ({rows} x {columns}), "
            f"over the {max_bytes / (1024 * 1024):.0f} MiB limit",
        )


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return UID(syntax)
    # ACR-NEMA style files (no preamble, no File Meta) still say how they were encoded.
    implicit, little = ds.original_encoding
    if implicit is None:
        raise PreprocessingError("dataset has no Transfer Syntax UID and no known encoding")
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _luma(pixels: np.ndarray, photometric: str) -> np.ndarray:
    if photometric.startswith("YBR"):
        gray = pixels[..., 0].astype(np.float64)  # Y already is the luma
    else:
        gray = pixels.astype(np.float64) @ LUMA_WEIGHTS
    return _robust_stretch(gray)


def _monochrome(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    modality_values = apply_modality_lut(pixels, ds)
    if ds.get("VOILUTSequence"):
        return _apply_voi_lut_sequence(modality_values, ds)
    values = modality_values.astype(np.float64)
    window = _first_window(ds)
    if window is not None:
        center, width = window
        return _window(values, center, width, str(ds.get("VOILUTFunction", "LINEAR")).upper())
    return _robust_stretch(values)


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray:
    if values.dtype.kind == "f":
        # A LUT is indexed by integer modality values; a rescale can leave fractions.
        values = np.rint(values).astype(np.int64)
    lut_data = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    low, high = float(lut_data.min()), float(lut_data.max())
    if high <= low:
        return _robust_stretch(values.astype(np.float64))
    out = apply_voi(values, ds, index=0).astype(np.float64)
    return (out - low) / (high - low)


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    # Multi-valued windows are alternatives; the first is the one the modality recommends.
    if isinstance(center, MultiValue | list | tuple):
        center = center[0]
    if isinstance(width, MultiValue | list | tuple):
        width = width[0]
    try:
        return float(center), float(width)
    except (TypeError, ValueError):
        return None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Apply a VOI window (PS3.3 C.11.2.1.2 and C.11.2.1.3) with output range [0, 1]."""
    if function == "SIGMOID" and width > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width >= 1:
        if width == 1:  # a threshold: the standard's formula divides by width - 1
            return (values > center - 0.5).astype(np.float64)
        return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    # A window the standard forbids (width < 1) says nothing useful about contrast.
    return _robust_stretch(values)


def _robust_stretch(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, ROBUST_PERCENTILES)
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def crop_region(height: int, width: int, crop: str) -> tuple[int, int, int, int]:
    """Where in a ``height`` x ``width`` display image the model's input is cut from.

    Parameters
    ----------
    height, width : int
        The display image's shape.
    crop : str
        One of :data:`CROPS`.

    Returns
    -------
    tuple of int
        ``(top, left, rows, columns)``: the whole image for ``"none"``; for ``"center"`` the
        central square of side min(height, width), at torchxrayvision's offsets
        (``size // 2 - side // 2``).
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, not {crop!r}")
    if crop == "none":
        return 0, 0, height, width
    side = min(height, width)
    return height // 2 - side // 2, width // 2 - side // 2, side, side


def to_model_input(display: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """Turn a display image into one model input: cropped, resized, replicated, normalised.

    Without a crop the image is resized to a square (antialiased bilinear), so every pixel of
    the original maps onto the input grid and a Grad-CAM map maps back onto the original by a
    plain resize; with ``crop="center"`` only the region :func:`crop_region` gives is.

    Parameters
    ----------
    display : numpy.ndarray
        2-D display image in [0, 1], as from :func:`dicom_to_display`.
    spec : PreprocessSpec
        Crop, resize, size, channel count and normalisation of the model input.

    Returns
    -------
    torch.Tensor
        ``(spec.channels, spec.image_size, spec.image_size)`` float32 tensor.

    Raises
    ------
    PreprocessingError
        If ``display`` is not a finite 2-D array.
    """
    image = np.asarray(display, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 1:
        raise PreprocessingError(f"display image must be 2-D, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise PreprocessingError("display image contains NaN or infinite values")
    top, left, rows, columns = crop_region(*image.shape, spec.crop)
    image = np.ascontiguousarray(image[top : top + rows, left : left + columns])
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    if spec.resize == "skimage":
        return _skimage_input(image, spec, mean, std)
    tensor = torch.from_numpy(image)[None, None]
    size = (spec.image_size, spec.image_size)
    resized = F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
    resized = resized[0].clamp_(0.0, 1.0).expand(spec.channels, -1, -1)
    return ((resized - mean) / std).contiguous()


def _skimage_input(
    image: np.ndarray, spec: PreprocessSpec, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    # Normalising first matters: the anti-aliasing filter pads with zeros, and zero must be
    # the normalised value there, as in torchxrayvision's normalize-then-XRayResizer.
    from skimage.transform import resize  # imported here: only such packages need it

    channels = torch.from_numpy(image)[None].expand(spec.channels, -1, -1)
    normalised = ((channels - mean) / std).numpy()
    size = (spec.channels, spec.image_size, spec.image_size)
    resized = resize(normalised, size, mode="constant", preserve_range=True)
    return torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32))
