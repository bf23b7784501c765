"""Preprocessing: real chest DICOM of every staged kind, and the DICOM grayscale pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit

from models.errors import PreprocessingError
from models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessSpec,
    clean_report_text,
    dicom_to_display,
    to_model_input,
)

CHEST_DICOM = (
    "rsna-pneumonia-sample/stage_1_train_images/*.dcm",
    "siim-acr-pneumothorax-sample/*.dcm",
    "nih-chestxray14-dicom-gcp/*.dcm",
    "barre-cr-mono1-10-chest/CR-MONO1-10-chest",
    "highdicom-dx-image/dx_image.dcm",
)
ZOO = "orthanc-transfer-syntax-zoo-noncxr"
# Its SOS header says Se=0 for a sequential DCT scan, which the standard forbids (Se=63);
# libjpeg refuses it and pydicom's Pillow and GDCM plugins do not do 12-bit JPEG Extended.
NONCONFORMANT_JPEG_EXTENDED = f"{JPEGExtended12Bit}.dcm"


def _display_and_input(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    display = dicom_to_display(pydicom.dcmread(path, force=True))
    return display, to_model_input(display, PreprocessSpec())


def _assert_valid(path: Path, display: np.ndarray, tensor: torch.Tensor) -> None:
    assert display.dtype == np.float32 and display.ndim == 2, path
    assert np.isfinite(display).all() and display.min() >= 0.0 and display.max() <= 1.0, path
    assert display.max() - display.min() > 0.5, f"{path}: display has almost no contrast"
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32, path
    assert torch.isfinite(tensor).all(), path
    lowest = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    highest = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    assert lowest - 1e-4 <= tensor.min() and tensor.max() <= highest + 1e-4, path


@pytest.mark.parametrize("pattern", CHEST_DICOM)
def test_every_staged_chest_dicom_becomes_a_valid_model_input(shared_data: Path, pattern: str):
    paths = sorted(shared_data.glob(pattern))
    assert paths, f"no files match {pattern}"
    for path in paths:
        display, tensor = _display_and_input(path)
        _assert_valid(path, display, tensor)
        dataset = pydicom.dcmread(path, force=True)
        assert display.shape == (dataset.Rows, dataset.Columns)


def test_every_transfer_syntax_in_the_zoo_decodes(shared_data: Path):
    paths = sorted((shared_data / ZOO).glob("*.dcm"))
    decodable = [path for path in paths if path.name != NONCONFORMANT_JPEG_EXTENDED]
    # Implicit/explicit LE, big endian, JPEG baseline, lossless, JPEG-LS, JPEG 2000, RLE.
    assert len(decodable) == 11
    for path in decodable:
        display, tensor = _display_and_input(path)
        _assert_valid(path, display, tensor)


def test_nonconformant_jpeg_extended_is_refused_with_the_transfer_syntax_named(shared_data: Path):
    dataset = pydicom.dcmread(shared_data / ZOO / NONCONFORMANT_JPEG_EXTENDED)
    with pytest.raises(PreprocessingError, match="JPEG Extended"):
        dicom_to_display(dataset)


def test_header_only_monochrome1_is_the_inverse_of_its_monochrome2_original(shared_data: Path):
    # Fake_MONOHR1 holds the original's pixel bytes with only the header changed to
    # MONOCHROME1, so the correct display is the original's photographic negative.
    folder = shared_data / "siim-acr-pneumothorax-sample"
    original = pydicom.dcmread(next(folder.glob("1.2.276.*.dcm")))
    relabelled = pydicom.dcmread(folder / "Fake_MONOHR1.dcm")
    assert original.PixelData == relabelled.PixelData
    np.testing.assert_allclose(
        dicom_to_display(relabelled), 1.0 - dicom_to_display(original), atol=1e-6
    )


def test_native_monochrome1_chest_shows_lungs_dark_and_mediastinum_bright(shared_data: Path):
    path = shared_data / "barre-cr-mono1-10-chest" / "CR-MONO1-10-chest"
    dataset = pydicom.dcmread(path, force=True)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    display = dicom_to_display(dataset)
    rows, cols = display.shape
    band = slice(rows // 4, 3 * rows // 4)
    mediastinum = display[band, int(cols * 0.45) : int(cols * 0.55)].mean()
    lungs = np.r_[
        display[band, int(cols * 0.2) : int(cols * 0.35)].ravel(),
        display[band, int(cols * 0.65) : int(cols * 0.8)].ravel(),
    ].mean()
    assert mediastinum > lungs + 0.1


def _image(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes) -> Dataset:
    """An in-memory uncompressed image dataset around ``pixels`` (uint16 or uint8)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    frames = pixels.shape[0] if pixels.ndim == 3 and photometric.startswith("MONO") else 1
    ds.Rows, ds.Columns = pixels.shape[-2:] if photometric.startswith("MONO") else pixels.shape[:2]
    ds.SamplesPerPixel = 1 if photometric.startswith("MONO") else 3
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 12 if pixels.dtype == np.uint16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _ramp() -> np.ndarray:
    return np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 0..4080 in one row


def test_linear_window_maps_its_range_onto_zero_to_one():
    display = dicom_to_display(_image(_ramp(), WindowCenter=2048, WindowWidth=1024))
    values = _ramp()[0].astype(float)
    assert np.all(display[0][values <= 2048 - 512] == 0.0)
    assert np.all(display[0][values >= 2048 + 512] == 1.0)
    middle = int(np.argmin(np.abs(values - 2048)))
    assert display[0, middle] == pytest.approx(0.5, abs=0.01)


def test_first_of_several_windows_is_used():
    single = dicom_to_display(_image(_ramp(), WindowCenter=1000, WindowWidth=400))
    several = dicom_to_display(_image(_ramp(), WindowCenter=[1000, 3000], WindowWidth=[400, 2000]))
    np.testing.assert_array_equal(single, several)


def test_window_is_applied_after_the_rescale():
    # Stored 0..4080 with slope 2, intercept -1000 -> -1000..7160; a window on 3000 +- 500
    # in output units covers stored values 1750..2250.
    ds = _image(
        _ramp(), RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3000, WindowWidth=1000
    )
    display = dicom_to_display(ds)[0]
    stored = _ramp()[0]
    assert np.all(display[stored <= 1740] == 0.0)
    assert np.all(display[stored >= 2260] == 1.0)
    assert 0.0 < display[stored == 2000][0] < 1.0


def test_sigmoid_window_function_is_honoured():
    ds = _image(_ramp(), WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
    display = dicom_to_display(ds)[0]
    assert display[_ramp()[0] == 2048][0] == pytest.approx(0.5, abs=1e-6)
    assert 0.0 < display.min() < 0.01 and 0.99 < display.max() < 1.0


def test_voi_lut_sequence_wins_over_window_and_is_normalised():
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [min(value // 2, 1000) for value in range(4096)]
    ds = _image(_ramp(), WindowCenter=100, WindowWidth=10)
    ds.VOILUTSequence = Sequence([item])
    display = dicom_to_display(ds)[0]
    expected = np.minimum(_ramp()[0] // 2, 1000) / 1000.0
    np.testing.assert_allclose(display, expected, atol=1e-6)


def test_without_voi_a_few_hot_pixels_do_not_flatten_the_contrast():
    pixels = _ramp()
    pixels[0, 0] = 4095  # e.g. a burned-in marker
    display = dicom_to_display(_image(pixels))
    assert np.median(display) == pytest.approx(0.5, abs=0.05)


def test_synthetic_monochrome1_is_inverted():
    normal = dicom_to_display(_image(_ramp(), WindowCenter=2048, WindowWidth=4096))
    inverse = dicom_to_display(_image(_ramp(), "MONOCHROME1", WindowCenter=2048, WindowWidth=4096))
    np.testing.assert_allclose(inverse, 1.0 - normal, atol=1e-6)


def test_rgb_becomes_its_luma():
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:, :4] = (255, 0, 0)  # red: luma 0.299
    rgb[:, 4:] = (0, 0, 255)  # blue: luma 0.114
    display = dicom_to_display(_image(rgb, "RGB"))
    assert display[0, 0] > display[0, 7]


def test_multiframe_uses_the_first_frame():
    frames = np.stack([_ramp(), _ramp()[:, ::-1]])
    display = dicom_to_display(_image(frames, WindowCenter=2048, WindowWidth=4096))
    assert display.shape == (4, 256)
    assert display[0, 0] < display[0, -1]


def test_dataset_without_pixel_data_is_refused():
    ds = _image(_ramp())
    del ds.PixelData
    with pytest.raises(PreprocessingError, match="PixelData"):
        dicom_to_display(ds)


def test_corrupt_compressed_pixel_data_is_refused_with_a_reason():
    ds = _image(np.zeros((4, 4), dtype=np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a jpeg \xff\xd9 "])
    if not get_decoder(JPEGBaseline8Bit).available_plugins:
        pytest.skip("no JPEG decoding plugin installed")
    with pytest.raises(PreprocessingError, match="cannot decode"):
        dicom_to_display(ds)


def test_model_input_has_the_spec_shape_and_normalisation():
    display = np.linspace(0, 1, 300 * 200, dtype=np.float32).reshape(300, 200)
    gray = to_model_input(display, PreprocessSpec(image_size=64, channels=1))
    assert gray.shape == (1, 64, 64)
    colour = to_model_input(display, PreprocessSpec(image_size=64, channels=3))
    assert colour.shape == (3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    restored = colour * std + mean
    # Channels are the same gray image; a vertical ramp stays a vertical ramp.
    torch.testing.assert_close(restored[0], restored[2], atol=1e-5, rtol=0)
    assert restored[0, 0, 32] < restored[0, 63, 32]
    assert restored.min() >= -1e-5 and restored.max() <= 1 + 1e-5


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 3)), np.array([[0.0, np.nan]])])
def test_model_input_refuses_non_2d_or_non_finite_images(bad: np.ndarray):
    with pytest.raises(PreprocessingError):
        to_model_input(bad, PreprocessSpec())


def test_preprocess_spec_round_trips_and_validates():
    spec = PreprocessSpec(image_size=320, channels=1)
    assert spec.mean == (0.449,) and PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="channels"):
        PreprocessSpec(channels=2)
    with pytest.raises(ValueError, match="one value per channel"):
        PreprocessSpec(channels=3, mean=(0.5,))
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec.from_dict({"image_size": 224, "flip": "horizontal"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  FINDINGS:\n\tNo acute   disease. ", "no acute disease."),
        ("No acute   disease.", "no acute disease."),
        ("", None),
        (" \n\t ", None),
        (None, None),
    ],
)
def test_report_text_is_normalised(text: str | None, expected: str | None):
    assert clean_report_text(text) == expected
