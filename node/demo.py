"""``cxrnode demo``: the node on its defaults beside a real, private Orthanc, one synthetic study
sent through it, and what came back printed."""

from __future__ import annotations

import io
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from node.config import Destination, Settings
from node.orthanc import Modality, Orthanc, free_port
from node.synthetic import SYNTHETIC_NOTE, synthetic_study

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"


def run_demo(workdir: Path | None = None, timeout_s: float = 300.0) -> int:
    """Run the demo; return 0 when the SR and overlay arrived in Orthanc."""
    from node.service import Node

    workdir = Path(workdir or tempfile.mkdtemp(prefix="cxrnode-demo-"))
    # No report feed in the demo: the study runs image-only as soon as it is stable.
    settings = Settings(
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        data_dir=workdir / "node",
        hl7_port=0,
        pairing_window_s=0,
    )
    orthanc = Orthanc(
        workdir / "orthanc",
        [Modality("cxrnode", settings.ae_title, "127.0.0.1", settings.dicom_port)],
    )
    settings = replace(
        settings, destinations=(Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),)
    )
    print(f"demo: working in {workdir}")
    with orthanc:
        print(f"demo: Orthanc {orthanc.get('/system')['Version']} at {orthanc.url}")
        node = Node(settings)
        node.start()
        try:
            return _send_and_show(orthanc, node, workdir, timeout_s)
        finally:
            node.stop()


def _send_and_show(orthanc: Orthanc, node, workdir: Path, timeout_s: float) -> int:
    study = synthetic_study()
    buffer = io.BytesIO()
    study.save_as(buffer, enforce_file_format=True)
    uploaded = orthanc.upload(buffer.getvalue())
    print(f"demo: uploaded a synthetic study ({SYNTHETIC_NOTE}) to Orthanc")
    started = time.monotonic()
    orthanc.send_study("cxrnode", uploaded["ParentStudy"])
    print(f"demo: Orthanc sent it to {node.settings.ae_title}; waiting for results ...")
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        instances = orthanc.study_instances(uploaded["ParentStudy"])
        if len(instances) >= 3:
            break
        time.sleep(0.5)
    else:
        print("demo: no results within the time limit; see the audit log (cxrnode audit)")
        return 1
    print(f"demo: SR and overlay stored in Orthanc {time.monotonic() - started:.1f} s after send")
    for instance in instances:
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance["ID"])))
        if ds.SOPInstanceUID == study.SOPInstanceUID:
            continue
        if ds.SOPClassUID == SR_STORAGE:
            print(f"\n  SR  {ds.SeriesDescription}")
            for line in _sr_lines(ds):
                print(f"      {line}")
        elif "PixelData" not in ds:
            print(f"\n  {ds.Modality}  {ds.SeriesDescription}")  # the presentation state
        elif ds.ImageType[-1] == "OVERVIEW":
            png = workdir / "overlay.png"
            Image.fromarray(np.asarray(ds.pixel_array, dtype=np.uint8)).save(png)
            print(f"\n  SC  {ds.SeriesDescription}\n      overlay saved as {png}")
    print(
        f"\n  audit log: CXRNODE_DATA_DIR={node.settings.data_dir} "
        f"cxrnode audit --study {study.StudyInstanceUID}"
    )
    return 0


def _sr_lines(sr) -> list[str]:
    """One line per finding of the SR: name, probability, call."""
    lines = []
    for item in _walk(sr.ContentSequence):
        if item.ValueType != "CONTAINER":
            continue
        finding = probability = call = None
        for child in item.get("ContentSequence", []):
            name = child.ConceptNameCodeSequence[0].CodeMeaning
            if child.ValueType == "CODE" and name == "Finding":
                finding = child.ConceptCodeSequence[0].CodeMeaning
            elif child.ValueType == "NUM":
                probability = float(child.MeasuredValueSequence[0].NumericValue)
            elif child.ValueType == "CODE" and finding and name != "Finding":
                call = child.ConceptCodeSequence[0].CodeMeaning
        if finding is not None and probability is not None:
            lines.append(f"{finding:<28} {probability:6.3f}  {call or ''}")
    for item in _walk(sr.ContentSequence):
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106":
            lines.append(f"comment: {item.TextValue}")
    return lines


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))
