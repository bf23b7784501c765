"""Inputs for the result-writer tests: real source DICOMs, their display images, Grad-CAM-like heat.

The display here is a plain min-max with MONOCHROME1 inversion and the heat a Gaussian blob: test
inputs of the right shape and range, not a stand-in for models/ preprocessing.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from node.results import AlgorithmInfo, Finding, ImageResult

DISCLAIMER = "NOT A TRAINED CLINICAL MODEL — random weights, for integration testing only."

# (name, SNOMED CT code) of a chest X-ray label vocabulary; "No Finding" has no SNOMED concept
# and carries a local code, as a real vocabulary would.
LABELS = (
    ("Atelectasis", "46621007", "SCT"),
    ("Cardiomegaly", "8186001", "SCT"),
    ("Pleural effusion", "60046008", "SCT"),
    ("Pneumonia", "233604007", "SCT"),
    ("Pneumothorax", "36118008", "SCT"),
    ("No Finding", "NOFINDING", "99CXR"),
)
PROBABILITIES = (0.8123, 0.2456, 0.6789, 0.0512, 0.9031, 0.3333)
THRESHOLD = 0.5

# Where the test heat blob sits, as fractions of (rows, cols): over the right lower lung.
BLOB_CENTRE = (0.55, 0.3)


@dataclass(frozen=True)
class Sources:
    """Paths of the staged chest X-ray DICOMs the tests use."""

    rsna: Path  # CR, SC SOP class, JPEG baseline, 1024², MONOCHROME2
    rsna_other: Path  # another patient of the same collection
    nih: Path  # DX, implicit VR LE, minimal header
    siim: Path  # CR, SC SOP class, MONOCHROME2
    siim_mono1: Path  # the same pixels, header changed to MONOCHROME1
    barre: Path  # CR MONOCHROME1, 440², 10-bit, ACR-NEMA: no preamble, no file meta
    dx: Path  # DX For Presentation, MONOCHROME1, with Patient Orientation and Imager Spacing


@pytest.fixture(scope="session")
def sources(shared_data: Path) -> Sources:
    rsna = sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    siim = shared_data / "siim-acr-pneumothorax-sample"
    found = Sources(
        rsna=rsna[0],
        rsna_other=rsna[1],
        nih=next((shared_data / "nih-chestxray14-dicom-gcp").glob("*.dcm")),
        siim=next(siim.glob("1.2.276*.dcm")),
        siim_mono1=siim / "Fake_MONOHR1.dcm",
        barre=shared_data / "barre-cr-mono1-10-chest" / "CR-MONO1-10-chest",
        dx=shared_data / "highdicom-dx-image" / "dx_image.dcm",
    )
    return found


def _read_source(path: Path) -> pydicom.Dataset:
    """Read a source as the node receives it, including ACR-NEMA files without file meta."""
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        # An ACR-NEMA file is implicit VR little endian by definition; pydicom needs to be told.
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _display_of(ds: pydicom.Dataset) -> np.ndarray:
    pixels = ds.pixel_array.astype(np.float32)
    pixels = (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels


def _heat_blob(shape: tuple[int, int], centre: tuple[float, float] = BLOB_CENTRE) -> np.ndarray:
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = centre[0] * rows, centre[1] * cols
    return np.exp(-(((y - cy) / (0.12 * rows)) ** 2 + ((x - cx) / (0.1 * cols)) ** 2)).astype(
        np.float32
    )


def _findings(probabilities: tuple[float, ...] = PROBABILITIES) -> tuple[Finding, ...]:
    return tuple(
        Finding(name, code, scheme, name, probability, THRESHOLD)
        for (name, code, scheme), probability in zip(LABELS, probabilities, strict=True)
    )


def _image_result(
    ds: pydicom.Dataset,
    probabilities: tuple[float, ...] = PROBABILITIES,
    heatmap_finding: str | None = "Pneumothorax",
) -> ImageResult:
    display = _display_of(ds)
    heatmaps = {} if heatmap_finding is None else {heatmap_finding: _heat_blob(display.shape)}
    return ImageResult(ds, display, _findings(probabilities), heatmaps)


@pytest.fixture(scope="session")
def read_source() -> Callable[[Path], pydicom.Dataset]:
    """Read a source as the node receives it (``force=True``, file meta where missing)."""
    return _read_source


@pytest.fixture(scope="session")
def make_result() -> Callable[..., ImageResult]:
    """Build an ImageResult from a source dataset.

    Takes the dataset, optionally ``probabilities`` (one per label of the test vocabulary) and
    ``heatmap_finding`` (the one finding that gets the heat blob as its Grad-CAM; None for no
    heatmap at all).
    """
    return _image_result


@pytest.fixture
def untrained() -> AlgorithmInfo:
    return AlgorithmInfo(
        name="cxrnode-untrained-reference",
        version="0.1.0",
        package_sha256="0123456789abcdef" * 4,
        trained=False,
        disclaimer=DISCLAIMER,
    )


@pytest.fixture
def trained() -> AlgorithmInfo:
    return AlgorithmInfo(
        name="cxr-densenet", version="2.3.1", package_sha256="f" * 64, trained=True, disclaimer=""
    )


@pytest.fixture
def uids() -> Callable[[str], str]:
    """Deterministic UIDs per test, as the pipeline derives them."""
    return lambda part: generate_uid(entropy_srcs=["cxrnode-tests", part])


@pytest.fixture(scope="session")
def dciodvfy_errors() -> Callable[..., list[str]]:
    """Run dicom3tools' dciodvfy on a file and return its "Error" lines.

    ``errors(path, *sources)`` leaves out the lines dciodvfy reports identically for one of the
    given source files: a patient or study attribute the results copy verbatim (an RSNA
    Patient's Age "32", not an AS value) is the source's error, and repairing it would make the
    study disagree with itself (dcentvfy).
    """
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")

    def run(path: Path) -> list[str]:
        done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]

    def errors(path: Path, *sources: Path) -> list[str]:
        inherited = {line for source in sources for line in run(source)}
        return [line for line in run(path) if line not in inherited]

    return errors


@pytest.fixture(scope="session")
def dsrdump() -> Callable[[Path], subprocess.CompletedProcess]:
    """Run dcmtk's dsrdump with long values and referenced instance UIDs printed, in UTF-8."""
    exe = shutil.which("dsrdump")
    if exe is None:
        pytest.skip("dsrdump (dcmtk) is not on PATH")

    def dump(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [exe, "+U8", "+Pl", "+Pu", str(path)], capture_output=True, text=True, timeout=60
        )

    return dump


# PixelMed's SR validator runs into JDK 17's XPath limits on a TID 1500 without these flags.
_PIXELMED_FLAGS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")


@pytest.fixture(scope="session")
def pixelmed_sr_errors() -> Callable[[Path], list[str]]:
    """Run PixelMed's DicomSRValidator (Debian pixelmed-apps) and return its "Error" lines."""
    java = shutil.which("java")
    if java is None or not PIXELMED_JAR.exists():
        pytest.skip(
            "PixelMed's validator needs java and pixelmed-apps (apt-get install pixelmed-apps)"
        )

    def errors(path: Path) -> list[str]:
        command = [java, *_PIXELMED_FLAGS, "-cp", str(PIXELMED_JAR)]
        command += ["com.pixelmed.validate.DicomSRValidator", str(path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert "Root Template Validation Complete" in done.stdout + done.stderr, done.stderr[-2000:]
        return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]

    return errors


@pytest.fixture(scope="session")
def dcentvfy_errors() -> Callable[..., list[str]]:
    """Run dicom3tools' dcentvfy (do these files of one study agree?) and return its errors."""
    exe = shutil.which("dcentvfy")
    if exe is None:
        pytest.skip("dcentvfy (dicom3tools) is not on PATH")

    def errors(*paths: Path) -> list[str]:
        done = subprocess.run([exe, *map(str, paths)], capture_output=True, text=True, timeout=60)
        return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]

    return errors
