"""Community checkpoints as packages: the node must score them exactly as their own code does.

Each test builds the published architecture with seeded random weights (batch-norm statistics
and head set so that outputs are neither saturated nor all on one side of their threshold),
saves it the way the real file is saved, imports it, and compares the node's predictor on real
DICOMs with the original library's own loading, preprocessing and forward.
"""

from __future__ import annotations

import copy
import hashlib
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from torch import nn
from torchvision import models as tv
from torchvision.transforms import v2

from models import importers
from models.errors import ModelPackageError
from models.importers import _xrv, import_chexnet, import_torchxrayvision, xrv_label, xrv_weights
from models.labels import NIH_CHESTXRAY14
from models.package import load_package
from models.predictor import Predictor
from models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessSpec,
    crop_region,
    dicom_to_display,
)
from node.cli import main
from node.config import Settings, load_settings
from node.worker import Worker
from storage import audit, jobs
from storage.database import Database
from storage.schema import Job, OutboxItem, utcnow
from storage.spool import FileStore
from storage.studies import add_instance, stable_studies
from support.instances import frontal_cr

RSNA = "rsna-pneumonia-sample/stage_1_train_images"
# MONOCHROME2 1024² JPEG; MONOCHROME1 440² CR without File Meta; MONOCHROME1 169x211 DX.
DICOMS = (
    f"{RSNA}/0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm",
    "barre-cr-mono1-10-chest/CR-MONO1-10-chest",
    "highdicom-dx-image/dx_image.dcm",
)
CHEXNET_ORDER = (
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
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def xrv():
    return _xrv()


@pytest.fixture(scope="module")
def displays(shared_data: Path) -> list[np.ndarray]:
    return [dicom_to_display(dcmread(shared_data / name, force=True)) for name in DICOMS]


def _calibrate(model: nn.Module, inputs: torch.Tensor, head: nn.Linear, centre: torch.Tensor):
    """Give random weights realistic statistics: batch norms from a pass over ``inputs``, and
    a head whose logits spread about ``centre`` (one value per output) by about one."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0  # running statistics = this batch's
    model.train()
    with torch.no_grad():
        model(inputs)
    model.eval()
    features: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _o: features.append(args[0]))
    with torch.no_grad():
        model(inputs[:1])
    hook.remove()
    scale = 1.5 / float(features[0].norm())
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape) * scale)
        head.bias.copy_(centre)


def _xrv_input(xrv, display: np.ndarray, size: int) -> torch.Tensor:
    """torchxrayvision's own route from an 8-bit-like [0, 1] image to its model input."""
    image = xrv.datasets.normalize(display, 1.0)[None]
    image = xrv.datasets.XRayCenterCrop()(image)
    return torch.from_numpy(xrv.datasets.XRayResizer(size)(image))[None]


def _logit_thresholds(weights: str) -> torch.Tensor:
    thresholds = torch.tensor(xrv_weights(weights).op_threshs, dtype=torch.float32)
    return torch.nan_to_num(torch.logit(thresholds), nan=0.0)


class _ThnnBackend:
    """What torch < 1.5 pickled for every module's ``_backend`` attribute."""

    def __reduce__(self):
        from torch.nn.backends.thnn import _get_thnn_function_backend

        return (_get_thnn_function_backend, ())


def _as_pickled_by_old_torch(model: nn.Module) -> nn.Module:
    """The released DenseNets are whole modules pickled by an older torch (2019-2020, before
    the zip format): each module names a ``_backend`` and lacks attributes today's
    ``state_dict()`` reads."""
    old = copy.deepcopy(model)
    for module in old.modules():
        del module.__dict__["_non_persistent_buffers_set"]
        module.__dict__["_backend"] = _ThnnBackend()
    return old


def _save_xrv_file(xrv, weights: str, directory: Path, displays: list[np.ndarray]) -> Path:
    """A random-weights file of ``weights``, saved as torchxrayvision releases that file."""
    spec = xrv_weights(weights)
    # Batch-norm statistics barely depend on the resolution; 224 keeps ResNet-50 quick.
    calibration = torch.cat([_xrv_input(xrv, d, 224) for d in displays[:2]])
    path = directory / spec.file_name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        if spec.encoder == "densenet121":
            model = xrv.models.DenseNet(weights=None)
            _calibrate(model, calibration, model.classifier, _logit_thresholds(weights))
            torch.save(_as_pickled_by_old_torch(model), path, _use_new_zipfile_serialization=False)
        else:
            model = tv.resnet50(num_classes=len(spec.outputs), weights=None)
            model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            _calibrate(model, calibration, model.fc, _logit_thresholds(weights))
            torch.save(model.state_dict(), path)  # the ResNet release is a state dict
    return path


def spec_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _library_model(xrv, weights: str, cache: Path) -> nn.Module:
    """The library's own model, loading the file from its cache directory (no download)."""
    factory = xrv.models.DenseNet if weights.startswith("densenet") else xrv.models.ResNet
    return factory(weights=weights, cache_dir=str(cache)).eval()


def _library_outputs(model: nn.Module, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid probabilities, op_norm outputs) of the library's forward."""
    thresholds = model.op_threshs
    with torch.no_grad():
        calibrated = model(image)[0].numpy()
        model.op_threshs, model.apply_sigmoid = None, True
        try:
            raw = model(image)[0].numpy()
        finally:
            model.op_threshs, model.apply_sigmoid = thresholds, False
    return raw, calibrated


@pytest.mark.parametrize(
    ("weights", "images"),
    [("densenet121-res224-all", 3), ("densenet121-res224-rsna", 3), ("resnet50-res512-all", 1)],
)
def test_torchxrayvision_file_scores_in_the_node_as_in_the_library(
    xrv, displays: list[np.ndarray], tmp_path: Path, weights: str, images: int
) -> None:
    spec = xrv_weights(weights)
    path = _save_xrv_file(xrv, weights, tmp_path, displays)
    library = _library_model(xrv, weights, tmp_path)

    config = import_torchxrayvision(path, weights, tmp_path / "package")
    package = load_package(tmp_path / "package")
    predictor = Predictor(package, device="cpu")

    kept = [spec.outputs.index(label.name) for label in config.labels]
    assert sorted(kept) == list(spec.kept)
    assert package.config.preprocessing == PreprocessSpec(
        spec.resolution, 1, (0.5,), (1 / 2048,), crop="center", resize="skimage"
    )
    calls = []
    for display in displays[:images]:
        raw, calibrated = _library_outputs(library, _xrv_input(xrv, display, spec.resolution))
        prediction = predictor.predict([display])[0]
        np.testing.assert_allclose(prediction.probabilities, raw[kept], atol=TOLERANCE, rtol=0)
        np.testing.assert_array_equal(prediction.present, calibrated[kept] >= 0.5)
        calls.extend(prediction.present.tolist())
    # The comparison means something only if both calls occur.
    assert any(calls) and not all(calls)


def test_rsna_weights_serve_only_their_two_trained_outputs(
    xrv, displays: list[np.ndarray], tmp_path: Path
) -> None:
    path = _save_xrv_file(xrv, "densenet121-res224-rsna", tmp_path, displays)
    config = import_torchxrayvision(path, "densenet121-res224-rsna", tmp_path / "package")
    assert [(label.name, label.code_value) for label in config.labels] == [
        ("Pneumonia", "233604007"),
        ("Lung Opacity", "LUNG_OPACITY"),
    ]
    assert [label.threshold for label in config.labels] == pytest.approx([0.13486601, 0.13511065])
    card = (tmp_path / "package" / "MODEL_CARD.md").read_text()
    assert spec_sha256(path) in card
    assert "Left out (no name or no operating threshold in the library): 0 (unnamed)," in card


def test_grad_cam_covers_what_the_cropping_model_saw(
    xrv, displays: list[np.ndarray], tmp_path: Path
) -> None:
    path = _save_xrv_file(xrv, "densenet121-res224-all", tmp_path, displays)
    import_torchxrayvision(path, "densenet121-res224-all", tmp_path / "package")
    predictor = Predictor(load_package(tmp_path / "package"), device="cpu")
    display = displays[2]  # 169 x 211: the centre crop drops 21 columns each side
    top, left, rows, columns = crop_region(*display.shape, "center")
    assert (top, left, rows, columns) == (0, 21, 169, 169)

    maps = predictor.explain(display, [0, 7])

    assert maps.shape == (2, *display.shape)
    assert np.isfinite(maps).all()
    inside = maps[:, top : top + rows, left : left + columns]
    assert inside.reshape(2, -1).max(axis=1) == pytest.approx([1.0, 1.0], abs=1e-3)
    assert not maps[:, :, :left].any() and not maps[:, :, left + columns :].any()


def _old_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename to the ``norm.1`` layer names of torchvision < 0.3, which CheXNet's file has,
    and drop the batch counters that torch < 0.4.1 did not save."""
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    return {
        pattern.sub(r"\1.\2.", key): value
        for key, value in state.items()
        if not key.endswith("num_batches_tracked")
    }


def _chexnet(displays: list[np.ndarray]) -> nn.Module:
    """arnoweng/CheXNet's DenseNet121 in DataParallel, seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        net = tv.densenet121(weights=None)
        net.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())
        calibration = torch.stack([_chexnet_input(d) for d in displays[:2]])
        _calibrate(net, calibration, net.classifier[0], torch.full((14,), -0.5))
    return nn.DataParallel(net).eval()  # on CPU: names the keys "module." as on GPUs


def _chexnet_input(display: np.ndarray) -> torch.Tensor:
    """CheXNet's transform of a gray image as ``Image.convert("RGB")`` gives it (the node's one
    pass: the whole image at 224, not arnoweng's ten 224 crops of a 256 resize)."""
    image = torch.from_numpy(display)[None].expand(3, -1, -1)
    transform = v2.Compose(
        [v2.Resize((224, 224), antialias=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    return transform(image)


def test_chexnet_checkpoint_scores_in_the_node_as_the_original(
    displays: list[np.ndarray], tmp_path: Path
) -> None:
    model = _chexnet(displays)
    checkpoint = {"epoch": 42, "state_dict": _old_densenet_keys(model.state_dict())}
    # Saved by torch 0.3: the legacy (non-zip) format.
    torch.save(checkpoint, tmp_path / "model.pth.tar", _use_new_zipfile_serialization=False)

    config = import_chexnet(tmp_path / "model.pth.tar", tmp_path / "package")
    predictor = Predictor(load_package(tmp_path / "package"), device="cpu")

    assert config.label_vocabulary == "nih-chestxray14"
    order = [CHEXNET_ORDER.index(label.name) for label in NIH_CHESTXRAY14]
    spread = []
    for display in displays:
        with torch.no_grad():
            expected = model(_chexnet_input(display)[None])[0].numpy()
        prediction = predictor.predict([display])[0]
        np.testing.assert_allclose(prediction.probabilities, expected[order], atol=TOLERANCE)
        spread.extend(prediction.probabilities.tolist())
    assert min(spread) > 0.05 and max(spread) < 0.95 and max(spread) - min(spread) > 0.2
    maps = predictor.explain(displays[0], [4])
    assert maps.shape == (1, *displays[0].shape) and maps.max() == pytest.approx(1.0, abs=1e-3)


@pytest.fixture
def node_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The node's settings point at a fresh SQLite audit log; returns its model.imported rows."""
    monkeypatch.setenv("CXRNODE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CXRNODE_DB_URL", raising=False)
    monkeypatch.setenv("CXRNODE_LOG_LEVEL", "WARNING")

    def imported() -> list[dict]:
        database = Database(load_settings(None).database_url)
        with database.reading() as session:
            events = audit.query(session, audit.AuditFilter(action="model.imported"))
            return [audit.as_dict(event) for event in events]

    return imported


def test_import_model_command_writes_a_package_the_node_loads_and_audits_it(
    xrv, displays: list[np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str], node_audit
) -> None:
    path = _save_xrv_file(xrv, "densenet121-res224-nih", tmp_path, displays)
    out = tmp_path / "package"
    argv = ["import-model", "torchxrayvision", str(path), "--weights", "densenet121-res224-nih"]

    assert main([*argv, "--out", str(out)]) == 0

    package = load_package(out)
    assert package.config.name == "xrv-densenet121-res224-nih"
    # Its 14 outputs are NIH's, so they are served in that vocabulary's order, evaluable.
    assert package.config.label_vocabulary == "nih-chestxray14"
    names = [label.name for label in package.config.labels]
    assert names == [label.name for label in NIH_CHESTXRAY14]
    assert f"{package.config.package_id}:" in capsys.readouterr().out
    (event,) = node_audit()
    assert event["outcome"] == "success"
    assert event["detail"]["model"] == package.config.package_id
    assert event["detail"]["file_sha256"] == spec_sha256(path)


def test_a_file_named_as_other_weights_is_refused_audited_and_nothing_written(
    xrv, displays: list[np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str], node_audit
) -> None:
    path = _save_xrv_file(xrv, "densenet121-res224-nih", tmp_path, displays)
    out = tmp_path / "package"
    argv = ["import-model", "torchxrayvision", str(path), "--weights", "densenet121-res224-all"]

    assert main([*argv, "--out", str(out)]) == 2

    assert "release file of 'densenet121-res224-nih'" in capsys.readouterr().err
    assert not out.exists()
    (event,) = node_audit()
    assert event["outcome"] == "failure"
    assert "release file of 'densenet121-res224-nih'" in event["detail"]["reason"]


def test_a_package_that_would_not_reproduce_the_model_is_not_written(
    xrv, displays: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save_xrv_file(xrv, "densenet121-res224-all", tmp_path, displays)
    # A head copied wrongly (rows swapped) is what the probe check exists to catch.
    copy_head = importers._copy_head
    monkeypatch.setattr(
        importers, "_copy_head", lambda linear, node, rows: copy_head(linear, node, rows[::-1])
    )

    with pytest.raises(ModelPackageError, match="does not reproduce"):
        import_torchxrayvision(path, "densenet121-res224-all", tmp_path / "package")
    assert not (tmp_path / "package").exists()


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.pth.tar"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))

    with pytest.raises(ModelPackageError, match=r"\.open is not a tensor type"):
        import_chexnet(path, tmp_path / "package")
    assert not marker.exists()
    assert not (tmp_path / "package").exists()


def test_a_file_of_another_architecture_is_refused_with_what_does_not_fit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(tv.resnet18(weights=None).state_dict(), path)

    with pytest.raises(ValueError, match="does not fit torchxrayvision densenet121-res224-all"):
        import_torchxrayvision(path, "densenet121-res224-all", tmp_path / "package")
    with pytest.raises(ValueError, match="unknown torchxrayvision weights 'densenet'"):
        import_torchxrayvision(path, "densenet", tmp_path / "package")


def test_default_preprocessing_is_written_as_before() -> None:
    # Packages that use neither crop nor the skimage resize stay readable by older nodes.
    assert set(PreprocessSpec().to_dict()) == {"image_size", "channels", "mean", "std"}
    spec = PreprocessSpec(512, 1, (0.5,), (1 / 2048,), crop="center", resize="skimage")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="crop must be one of"):
        PreprocessSpec(crop="left")
    assert math.isclose(spec.std[0] * 2048, 1.0)


def _texts(dataset) -> list[str]:
    """Every TEXT content item's value anywhere in a dataset."""
    return [
        str(item.TextValue)
        for element in dataset.iterall()
        if element.VR == "SQ"
        for item in element.value
        if item.get("ValueType") == "TEXT"
    ]


def _codes(dataset) -> set[tuple[str, str]]:
    """Every (scheme, code value) of a coded concept anywhere in a dataset."""
    found = set()
    for element in dataset.iterall():
        if element.VR == "SQ":
            for item in element.value:
                if "CodeValue" in item:
                    found.add((item.CodingSchemeDesignator, item.CodeValue))
    return found


def test_an_imported_package_runs_through_the_worker_into_coded_results(
    xrv, displays: list[np.ndarray], shared_data: Path, tmp_path: Path
) -> None:
    path = _save_xrv_file(xrv, "densenet121-res224-rsna", tmp_path, displays)
    import_torchxrayvision(path, "densenet121-res224-rsna", tmp_path / "package")
    predictor = Predictor(load_package(tmp_path / "package"), device="cpu")
    settings = Settings(data_dir=tmp_path / "node", outputs=("SR", "SC"), build_processes=0)
    db = Database(settings.database_url)
    db.create_schema()
    results = FileStore(tmp_path / "node" / "results")
    spool = FileStore(tmp_path / "node" / "spool")
    worker = Worker(settings, db, spool, results, predictor)
    try:
        data = (shared_data / DICOMS[0]).read_bytes()
        spool.write("1.2.3/image.dcm", data)
        with db.transaction() as session:
            header = frontal_cr("1.2.3", transfer_syntax=None)
            add_instance(
                session,
                header,
                relpath="1.2.3/image.dcm",
                size=len(data),
                sha256="0",
                calling_ae="X",
            )
            (study,) = stable_studies(session, utcnow())
            jobs.queue_run(session, study)
        assert worker.process_next(limit=1) == 1
        worker.flush()
    finally:
        worker.close()

    expected = predictor.predict([displays[0]])[0].probabilities
    with db.transaction() as session:
        (job,) = session.query(Job).all()
        served = job.result["images"][0]["probabilities"]
        assert list(served) == ["Pneumonia", "Lung Opacity"]
        np.testing.assert_allclose(list(served.values()), expected, atol=5e-5)  # 4 decimals
        (sr,) = [item for item in session.query(OutboxItem) if item.kind == "SR"]
        sr_path = results.root / sr.path
    sr = dcmread(sr_path)
    codes, texts = _codes(sr), _texts(sr)
    # A label with an outline is a coded measurement; one without is stated in words (the SR
    # layout OHIF hydrates): either way each of the imported labels is in the SR.
    for scheme, code, name in (
        ("SCT", "233604007", "Pneumonia"),
        ("99CXR", "LUNG_OPACITY", "Lung Opacity"),
    ):
        assert (scheme, code) in codes or any(t.startswith(f"{name}") for t in texts), name


def test_every_torchxrayvision_pathology_has_a_vocabulary_code_and_others_a_local_one(xrv):
    for name in xrv.datasets.default_pathologies:
        assert not xrv_label(name).code_value.startswith("XRV_"), name
    assert xrv_label("Effusion").code_value == "60046008"  # NIH's name for pleural effusion
    unknown = xrv_label("Pneumoperitoneum")
    assert (unknown.coding_scheme, unknown.code_value) == ("99CXR", "XRV_PNEUMOPERITO")
