"""The Integrated Gradients capture series: written where the model's package asks for it
(``explanation_captures``), one capture per present finding, beside the Grad-CAM ones; and a
package without the flag (every package before it) loads and writes none."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from models.default import bundled_default_package, reference_config
from models.errors import ModelPackageError
from models.network import build_model
from models.package import CONFIG_FILE, LoadedPackage, load_package
from models.predictor import Predictor
from node.build import BuildOptions, ResultJob, write_results
from node.config import Settings
from node.results import GridHeatmap
from node.worker import Worker
from storage.database import Database
from storage.spool import FileStore
from support.work_items import queue_study, work_item

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")


def _series(results: FileStore) -> list[pydicom.Dataset]:
    return sorted(
        (pydicom.dcmread(path) for path in results.root.rglob("*.dcm")),
        key=lambda ds: (int(ds.SeriesNumber), int(ds.InstanceNumber)),
    )


def test_present_findings_with_an_ig_map_get_a_capture_in_their_own_series(
    tmp_path, sources, read_source, make_result, untrained
):
    image = make_result(read_source(sources.rsna))
    (finding,) = image.heatmaps  # a present finding
    heat = np.zeros((7, 7), np.float32)
    heat[2, 5] = 1.0
    image = replace(
        image,
        attributions={
            finding: GridHeatmap(heat, image.display.shape, (0, 0, *image.display.shape))
        },
    )
    results = FileStore(tmp_path)
    options = BuildOptions.of(Settings(outputs=("SC",)).validate())
    job = ResultJob(
        work_item(str(image.source.StudyInstanceUID)), options, results, untrained, False
    )
    write_results(job, [image])

    objects = _series(results)
    assert [(int(ds.SeriesNumber), ds.ImageType[-1]) for ds in objects] == [
        (9902, "OVERVIEW"),
        (9903, "FINDING"),
        (9905, "FINDING"),
    ]
    gradcam, ig = objects[1], objects[2]
    assert ig.SeriesDescription.startswith("UNTRAINED AI integrated gradients per finding")
    assert f"the Integrated Gradients heatmap for {finding}" in ig.DerivationDescription
    assert ig.SeriesInstanceUID != gradcam.SeriesInstanceUID
    # The IG map is drawn where it is hot (upper right), not where Grad-CAM's blob is.
    assert not np.array_equal(ig.pixel_array, gradcam.pixel_array)


def _tiny_package(explanation_captures: tuple[str, ...]) -> LoadedPackage:
    """An image-only ResNet-18 on 64 px inputs whose only present finding is its first label."""
    config = reference_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model({"image_encoder": "resnet18", "hidden_dim": 0}, len(config.labels))
    with torch.no_grad():
        model.output_layer.bias.fill_(-8.0)
        model.output_layer.bias[0] = 8.0
    config = replace(
        config,
        architecture=model.architecture,
        preprocessing=replace(config.preprocessing, image_size=64),
        explanation_captures=explanation_captures,
    )
    return LoadedPackage(config, model.eval(), Path("synthetic"))


@pytest.mark.parametrize("flag", [("integrated_gradients",), ()], ids=["asked", "not asked"])
def test_the_worker_draws_ig_captures_only_where_the_package_asks(tmp_path, sources, flag):
    settings = Settings(data_dir=tmp_path, outputs=("SC",), build_processes=0)
    db = Database(settings.database_url)
    db.create_schema()
    results = FileStore(tmp_path / "results")
    predictor = Predictor(_tiny_package(flag), device="cpu")
    worker = Worker(settings, db, FileStore(tmp_path / "spool"), results, predictor)
    try:
        queue_study(worker, "1.2.3", sources.rsna)
        assert worker.process_next() == 1
        worker.process_next()
    finally:
        worker.close()
    numbers = [int(ds.SeriesNumber) for ds in _series(results)]
    assert numbers == ([9902, 9903, 9905] if flag else [9902, 9903])


def test_packages_without_the_flag_load_and_an_unknown_capture_is_refused(tmp_path):
    assert load_package(bundled_default_package()).config.explanation_captures == ()
    package = shutil.copytree(bundled_default_package(), tmp_path / "package")
    config = json.loads((package / CONFIG_FILE).read_text())
    (package / CONFIG_FILE).write_text(
        json.dumps({**config, "explanation_captures": ["integrated_gradients"]})
    )
    assert load_package(package).config.explanation_captures == ("integrated_gradients",)
    (package / CONFIG_FILE).write_text(json.dumps({**config, "explanation_captures": ["lime"]}))
    with pytest.raises(ModelPackageError, match="unknown explanation_captures"):
        load_package(package)
