"""Trying a model without a PACS: one image file (DICOM, PNG or JPEG) and, optionally, report
text, to the findings, the heatmaps and the outlines the node would send for it.

``cxrnode predict``, ``POST /api/predict`` and the admin's ``/try`` page all call
:func:`predict_image`, which takes the serving route at every step, so that what a person sees
here is what the node would send: the worker's pixel limits and decoding
(``models.preprocess.decode_pixels`` and ``pixels_to_display``) for DICOM, the training
datasets' reading (``exported_image_to_display``) for PNG and JPEG; the predictor's
``prepare``, ``predict`` and ``explain_on_grid`` with the report cleaned by the package's own
text options; the worker's choice of labels to explain; the result writers' heatmaps
(``GridHeatmap``), regions (``heat_region``) and drawing (``blend_heatmap``,
``draw_regions``). Nothing is stored here.

Explanations are named maps per label, one entry of :data:`EXPLAINERS` per method: Grad-CAM
(the node's, always) and Integrated Gradients (``models.attribution``, on request: it costs
many forward passes), which for a model that reads the report also says which of its words
pushed each finding. ``attention`` asks a cross-attention model for its fusion's weights of the
image's regions over the report's tokens (one more method, not a map per label). The image's
embedding comes back too, for the nearest earlier cases (``node.similar.nearest``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydicom import dcmread

from models.attribution import (
    DEFAULT_STEPS,
    AttentionMaps,
    WordAttribution,
    attention_maps,
    integrated_gradients_on_grid,
    word_attributions,
)
from models.errors import PreprocessingError
from models.fusion import CrossAttentionFusion
from models.pixel_limits import PixelLimitError, check_deflated_bytes
from models.predictor import Predictor, PreparedInputs, labels_to_explain
from models.preprocess import decode_pixels, exported_image_to_display, pixels_to_display
from models.text import ReportText
from node.errors import CxrNodeError
from node.results import (
    DEFAULT_REGION_LEVEL,
    Finding,
    GridHeatmap,
    HeatRegion,
    heat_region,
    model_findings,
)
from node.results.annotation import draw_legend, draw_regions
from node.results.findings import LEGEND_TITLES
from node.results.heatmap import blend_heatmap, legend_ramp
from storage import audit
from storage.actions import Action

if TYPE_CHECKING:
    from node.config import Settings
    from storage.database import Database

# What an input error is about; the HTTP API answers "too_large" with 413, the others with 422.
INPUT_ERRORS = ("empty", "unreadable", "not_image", "too_large")
_DICOM_SUFFIXES = (".dcm", ".dicom", "")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SUFFIXES = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}

# An explanation method: the predictor, the prepared image, the labels to explain and the
# Integrated Gradients steps (ignored by Grad-CAM); one map per label, float32 in [0, 1] on
# the display image's grid.
Explainer = Callable[[Predictor, PreparedInputs, Sequence[int], int], list[np.ndarray]]


class PredictInputError(CxrNodeError, ValueError):
    """A file the model cannot be tried on; ``kind`` (one of :data:`INPUT_ERRORS`) says why:
    an empty file, one that is no readable DICOM, PNG or JPEG, a DICOM without an image, or an
    image over the decoding limit."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageFile:
    """One file to try the model on.

    Attributes
    ----------
    name : str
        Its name, for messages and to tell a DICOM without preamble by its suffix; never a
        path anything is written to.
    data : bytes
        Its contents.
    """

    name: str
    data: bytes

    @classmethod
    def read(cls, path: str | Path) -> ImageFile:
        """The file at ``path``.

        Raises
        ------
        PredictInputError
            If it cannot be read.
        """
        path = Path(path)
        try:
            return cls(path.name, path.read_bytes())
        except OSError as exc:
            raise PredictInputError("unreadable", f"{path}: {exc.strerror or exc}") from None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class Explanation:
    """One method's map of one label on the image, and the outline the node would draw.

    Attributes
    ----------
    method : str
        The explanation method (a key of :data:`EXPLAINERS`).
    label : str
        The finding it explains.
    heat : numpy.ndarray
        float32 (rows, columns) in [0, 1] on the display image's grid.
    region : HeatRegion or None
        The finding's region when it is present (as the SR, GSPS and captures draw it).
    number : int or None
        The region's number, its rank among the present findings' regions.
    """

    method: str
    label: str
    heat: np.ndarray
    region: HeatRegion | None = None
    number: int | None = None


@dataclass(frozen=True, eq=False)
class Prediction:
    """What the model says of one image, with what it was given.

    Attributes
    ----------
    name, sha256, size, format
        The file: its name, digest, bytes and ``"dicom"``, ``"png"`` or ``"jpeg"``.
    display : numpy.ndarray
        float32 (rows, columns) in [0, 1]: the image as the model's preprocessing starts from.
    findings : tuple of Finding
        Every label, highest probability first.
    explanations : tuple of Explanation
        Per method, the maps of the explained labels (every present one, and the top one).
    model : dict
        The package: ``id``, ``name``, ``version``, ``trained``, ``disclaimer``.
    report : dict
        ``given`` (text came), ``read`` (the model read it), ``cleaned`` (what it read).
    embedding : numpy.ndarray or None
        The vector the head classified (``models.predictor.Prediction.embedding``), which the
        node stores per study for retrieval.
    words : dict of str to tuple of WordAttribution
        Per explained label, the report's words and how much each pushed it (Integrated
        Gradients); empty unless IG was asked of a model that read a report.
    attention : AttentionMaps or None
        The cross-attention fusion's weights of the image grid over the report's tokens, when
        ``attention`` was asked.
    """

    name: str
    sha256: str
    size: int
    format: str
    display: np.ndarray
    findings: tuple[Finding, ...]
    explanations: tuple[Explanation, ...]
    model: dict[str, Any]
    report: dict[str, Any]
    embedding: np.ndarray | None = None
    words: dict[str, tuple[WordAttribution, ...]] = field(default_factory=dict)
    attention: AttentionMaps | None = None

    @property
    def present(self) -> list[Finding]:
        """The present findings, highest probability first."""
        return [f for f in self.findings if f.present]

    def explanation(self, label: str, method: str = "gradcam") -> Explanation:
        """The map of ``label`` by ``method``.

        Raises
        ------
        KeyError
            If that label was not explained by that method.
        """
        for explanation in self.explanations:
            if (explanation.label, explanation.method) == (label, method):
                return explanation
        explained = sorted({e.label for e in self.explanations if e.method == method})
        raise KeyError(f"no {method} map of {label!r}; explained: {', '.join(explained)}")

    def overlay(self, explanation: Explanation) -> np.ndarray:
        """uint8 (rows, columns, 3): the image with the map blended in, the finding's outline
        and its number, and the colour scale, as the node's finding capture draws them."""
        rgb = blend_heatmap(self.display, explanation.heat)
        if explanation.region is not None:
            rgb = draw_regions(rgb, [(explanation.number or 1, explanation.region)])
        return draw_legend(rgb, legend_ramp(), LEGEND_TITLES[explanation.method])

    def overview(self) -> np.ndarray:
        """uint8 (rows, columns, 3): every present finding's outline, numbered, over the top
        finding's first map, as the node's overview capture draws them."""
        top = next((e for e in self.explanations if e.label == self.findings[0].name), None)
        rgb = blend_heatmap(self.display, top.heat if top is not None else None)
        outlined = {}
        for e in self.explanations:
            if e.region is not None:
                outlined.setdefault(e.label, (e.number or 1, e.region))
        rgb = draw_regions(rgb, sorted(outlined.values(), key=lambda pair: pair[0]))
        return draw_legend(rgb, legend_ramp()) if top is not None else rgb

    def to_json(self, heatmaps: bool = False) -> dict[str, Any]:
        """The prediction as plain JSON values (the CLI's ``--format json`` and the API's
        answer); with ``heatmaps``, each explanation's overlay as a base64 PNG too."""
        rows, columns = self.display.shape
        return {
            "file": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
            "rows": rows,
            "columns": columns,
            "model": self.model,
            "report": self.report,
            "findings": [_finding_json(f) for f in self.findings],
            "explanations": [
                {
                    "method": e.method,
                    "label": e.label,
                    "region": _region_json(e.region, e.number),
                    **({"overlay_png": png_base64(self.overlay(e))} if heatmaps else {}),
                }
                for e in self.explanations
            ],
            "words": {
                label: [{"word": w.word, "score": round(w.score, 6)} for w in words]
                for label, words in self.words.items()
            },
            **({"attention": _attention_json(self.attention)} if self.attention else {}),
        }


def _grad_cam(
    predictor: Predictor, prepared: PreparedInputs, indices: Sequence[int], steps: int
) -> list[np.ndarray]:
    (grid,) = predictor.explain_on_grid(prepared, [indices])
    return [GridHeatmap(cam, grid.size, grid.region).on_source_grid() for cam in grid.maps]


def _integrated_gradients(
    predictor: Predictor, prepared: PreparedInputs, indices: Sequence[int], steps: int
) -> list[np.ndarray]:
    (grid,), _ = integrated_gradients_on_grid(predictor, prepared, [indices], steps)
    return [GridHeatmap(m, grid.size, grid.region).on_source_grid() for m in grid.maps]


EXPLAINERS: dict[str, Explainer] = {
    "gradcam": _grad_cam,
    "integrated_gradients": _integrated_gradients,
}
# Every method a try may ask for: the label maps, and the fusion's attention.
METHODS = (*EXPLAINERS, "attention")


def check_method_names(methods: Sequence[str]) -> None:
    """Refuse methods that do not exist (before any model is at hand).

    Raises
    ------
    ValueError
        Naming the methods that can be asked.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown explanation methods {unknown}; known: {', '.join(METHODS)}")


def check_methods(predictor: Predictor, methods: Sequence[str]) -> None:
    """Refuse methods that do not exist, or ``attention`` of a model without cross-attention.

    Raises
    ------
    ValueError
        Naming the methods that can be asked, or why this model cannot give one.
    """
    check_method_names(methods)
    if "attention" in methods and not isinstance(predictor.model.fusion, CrossAttentionFusion):
        raise ValueError(
            f"attention maps need a model with cross-attention fusion; "
            f"{predictor.package.config.name} fuses by {predictor.model.architecture['fusion']}"
        )


def predict_image(
    predictor: Predictor,
    image: ImageFile,
    report: str | None = None,
    *,
    max_decoded_bytes: int,
    region_level: float = DEFAULT_REGION_LEVEL,
    methods: Sequence[str] = ("gradcam",),
    ig_steps: int = DEFAULT_STEPS,
) -> Prediction:
    """Run the model on one file as the node would on a received image.

    Parameters
    ----------
    predictor : Predictor
        The loaded model (shared between threads: its calls are serialised).
    image : ImageFile
        A DICOM file (with or without preamble), a PNG or a JPEG.
    report : str or None
        Report text, cleaned by the package's text options; ignored by an image-only model.
    max_decoded_bytes : int
        The most the image may take once decoded (``max_decoded_mb``).
    region_level : float
        Fraction of a map's peak a finding's region encloses (``region_level``).
    methods : sequence of str
        Explanation methods, keys of :data:`EXPLAINERS`.
    ig_steps : int
        Integrated Gradients' steps (``models.attribution.DEFAULT_STEPS``, chosen by measure).

    Returns
    -------
    Prediction

    Raises
    ------
    PredictInputError
        If the file is empty, no readable image, a DICOM without pixels, or over the limit.
    ValueError
        If a method is unknown, or ``attention`` is asked of a model without cross-attention.
    """
    check_methods(predictor, methods)
    display, kind = read_display(image, max_decoded_bytes)
    config = predictor.package.config
    text = ReportText(report) if report and report.strip() else None
    reads_text = predictor.uses_text
    prepared = predictor.prepare([display], [text] if reads_text else None)
    (output,) = predictor.predict(prepared)
    findings = model_findings(config.labels, output.probabilities)
    indices = labels_to_explain(output)
    explanations = []
    for method in (m for m in methods if m in EXPLAINERS):
        maps = EXPLAINERS[method](predictor, prepared, indices, ig_steps)
        explanations.extend(_explained(method, [findings[i] for i in indices], maps, region_level))
    words = {}
    if "integrated_gradients" in methods and reads_text and text is not None:
        words = {
            findings[i].name: word_attributions(predictor, prepared, 0, text, i, ig_steps)
            for i in indices
        }
    return Prediction(
        name=image.name,
        sha256=image.sha256,
        size=len(image.data),
        format=kind,
        display=display,
        findings=tuple(sorted(findings, key=_by_probability)),
        explanations=tuple(explanations),
        model={
            "id": config.package_id,
            "name": config.name,
            "version": config.version,
            "trained": config.trained,
            "disclaimer": config.disclaimer,
        },
        report={
            "given": text is not None,
            "read": bool(output.text_used),
            "cleaned": config.text_cleaning(text) if reads_text and text is not None else None,
        },
        embedding=output.embedding,
        words=words,
        attention=(
            attention_maps(predictor, prepared, [text])[0] if "attention" in methods else None
        ),
    )


def _explained(
    method: str, findings: list[Finding], maps: list[np.ndarray], region_level: float
) -> list[Explanation]:
    """One method's explanations, a present finding's with its region, numbered as the
    overview capture numbers them (by probability, among the regions drawn)."""
    regions = {
        f.name: heat_region(heat, f.name, f.probability, region_level)
        for f, heat in zip(findings, maps, strict=True)
        if f.present
    }
    drawn = sorted((f for f in findings if regions.get(f.name)), key=_by_probability)
    numbers = {f.name: n for n, f in enumerate(drawn, start=1)}
    return [
        Explanation(method, f.name, heat, regions.get(f.name), numbers.get(f.name))
        for f, heat in zip(findings, maps, strict=True)
    ]


def read_display(image: ImageFile, max_decoded_bytes: int) -> tuple[np.ndarray, str]:
    """The display image of a file, and its format (``"dicom"``, ``"png"``, ``"jpeg"``).

    PNG and JPEG are told by their signature, DICOM by its preamble or, without one, by a
    ``.dcm``/``.dicom`` suffix or none; anything else is tried as an image Pillow reads.

    Raises
    ------
    PredictInputError
        As :func:`predict_image`.
    """
    data = image.data
    if not data:
        raise PredictInputError("empty", f"{image.name}: the file is empty")
    suffix = Path(image.name).suffix.lower()
    is_export = data.startswith((_PNG_MAGIC, _JPEG_MAGIC))
    if not is_export and (data[128:132] == b"DICM" or suffix in _DICOM_SUFFIXES):
        return _dicom_display(image, max_decoded_bytes), "dicom"
    try:
        display = exported_image_to_display(io.BytesIO(data), max_decoded_bytes)
    except PixelLimitError as exc:
        raise PredictInputError("too_large", f"{image.name}: {exc}") from None
    except PreprocessingError:
        raise PredictInputError(
            "unreadable", f"{image.name}: neither a DICOM file nor a PNG or JPEG image"
        ) from None
    formats = {_PNG_MAGIC[:4]: "png", _JPEG_MAGIC[:3]: "jpeg"}
    return display, formats.get(data[:4], formats.get(data[:3], "image"))


def _dicom_display(image: ImageFile, max_decoded_bytes: int) -> np.ndarray:
    """The worker's way from a DICOM file to its display image (``Worker._decode``)."""
    try:
        check_deflated_bytes(image.data, max_decoded_bytes)
        ds = dcmread(io.BytesIO(image.data), force=True)
    except PixelLimitError as exc:
        raise PredictInputError("too_large", f"{image.name}: {exc}") from None
    except Exception as exc:  # whatever pydicom raises on a malformed file means the same
        raise PredictInputError(
            "unreadable", f"{image.name}: not a readable DICOM file ({type(exc).__name__}: {exc})"
        ) from None
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        if "SOPClassUID" not in ds:
            raise PredictInputError(
                "unreadable", f"{image.name}: neither a DICOM file nor a PNG or JPEG image"
            )
        what = getattr(ds.SOPClassUID, "name", str(ds.SOPClassUID))
        raise PredictInputError(
            "not_image", f"{image.name}: a DICOM {what} without pixel data, not an image"
        )
    try:
        pixels, photometric = decode_pixels(ds, max_decoded_bytes)
        return pixels_to_display(ds, pixels, photometric)
    except PixelLimitError as exc:
        raise PredictInputError("too_large", f"{image.name}: {exc}") from None
    except (PreprocessingError, ValueError, OSError, NotImplementedError) as exc:
        raise PredictInputError("not_image", f"{image.name}: {exc}") from None


def record_prediction(
    db: Database,
    image: ImageFile | None,
    *,
    via: str,
    prediction: Prediction | None = None,
    error: str | None = None,
    **context: Any,
) -> None:
    """Audit one try (``model.predicted``): what was given, by whom, and what the model said or
    why it was refused; never the file, its name or the report text.

    Parameters
    ----------
    db : Database
        The node's database.
    image : ImageFile or None
        The file (its digest and size are recorded); None when it was refused unread.
    via : str
        ``"cli"`` or ``"http"``.
    prediction : Prediction, optional
        The model's answer; its absence (with ``error``) records a failure.
    error : str, optional
        Why the file was refused.
    context
        ``actor_user``, ``actor_ip`` for the event; any other key (``content_type``, ``kept``,
        ``declared_size``, ``kind``...) goes into its detail.
    """
    actors = {key: context.pop(key) for key in ("actor_user", "actor_ip") if key in context}
    detail: dict[str, Any] = {"via": via}
    if image is not None:
        detail.update(sha256=image.sha256, size=len(image.data))
    detail.update(context)
    if prediction is not None:
        detail.update(
            format=prediction.format,
            model=prediction.model["id"],
            findings={f.name: round(f.probability, 4) for f in prediction.findings},
            present=[f.name for f in prediction.present],
            report_given=prediction.report["given"],
        )
    else:
        detail["reason"] = error
    outcome = audit.Outcome.SUCCESS if prediction is not None else audit.Outcome.FAILURE
    with db.transaction() as session:
        audit.record(session, Action.MODEL_PREDICTED, outcome, **actors, detail=detail)


def keep_upload(data_dir: Path, prediction: Prediction, image: ImageFile) -> str:
    """Store an upload a request asked to keep: ``uploads/<sha256>.<format>`` under the data
    directory (never a name the client gave), and return that relative path."""
    folder = data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    relative = f"uploads/{prediction.sha256}.{_SUFFIXES.get(prediction.format, 'bin')}"
    target = data_dir / relative
    if not target.exists():
        partial = target.with_suffix(".part")
        with open(partial, "wb", opener=lambda path, flags: os.open(path, flags, 0o600)) as fh:
            fh.write(image.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, target)
    return relative


@dataclass(frozen=True, eq=False)
class Tried:
    """One file of :func:`try_files`: its model answer, or why it was refused."""

    path: Path
    prediction: Prediction | None = None
    error: PredictInputError | None = None

    def to_json(self) -> dict[str, Any]:
        """As :meth:`Prediction.to_json`, or the file, the error's kind and message."""
        if self.prediction is not None:
            return {"path": str(self.path), **self.prediction.to_json()}
        assert self.error is not None
        return {"path": str(self.path), "error": self.error.kind, "message": str(self.error)}


def try_files(
    predictor: Predictor,
    paths: Sequence[Path],
    report: str | None,
    settings: Settings,
    db: Database,
    *,
    actor_user: str,
    heatmap_dir: Path | None = None,
    progress: Callable[[int, Path], None] | None = None,
    methods: Sequence[str] = ("gradcam",),
) -> Iterator[Tried]:
    """``cxrnode predict``: each file through :func:`predict_image`, audited; a bad file is
    reported and the others still run.

    Parameters
    ----------
    predictor : Predictor
        The model.
    paths : sequence of pathlib.Path
        The files.
    report : str or None
        Report text for every file.
    settings : Settings
        ``max_decoded_mb`` and ``region_level``.
    db : Database
        Where each try is audited (``model.predicted``).
    actor_user : str
        Who runs the command.
    heatmap_dir : pathlib.Path, optional
        Where each file's overview and per-finding overlays are written as PNG.
    progress : callable, optional
        Called with (index, path) before each file.
    methods : sequence of str
        Explanation methods, keys of :data:`EXPLAINERS`.

    Yields
    ------
    Tried
        One per file, in order.
    """
    stems = Counter(path.stem for path in paths)
    for index, path in enumerate(paths):
        if progress is not None:
            progress(index, path)
        image = None
        try:
            image = ImageFile.read(path)
            prediction = predict_image(
                predictor,
                image,
                report,
                max_decoded_bytes=settings.max_decoded_bytes,
                region_level=settings.region_level,
                methods=methods,
            )
        except PredictInputError as exc:
            record_prediction(
                db, image, via="cli", error=str(exc), kind=exc.kind, actor_user=actor_user
            )
            yield Tried(path, error=exc)
            continue
        record_prediction(db, image, via="cli", prediction=prediction, actor_user=actor_user)
        if heatmap_dir is not None:
            stem = path.stem if stems[path.stem] == 1 else f"{path.stem}-{prediction.sha256[:8]}"
            write_overlays(prediction, heatmap_dir, stem)
        yield Tried(path, prediction)


def write_overlays(prediction: Prediction, folder: Path, stem: str) -> list[Path]:
    """Write ``<stem>.overview.png`` and ``<stem>.<method>.<label>.png`` per explanation into
    ``folder`` (created); return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{stem}.overview.png"]
    written[0].write_bytes(png_bytes(prediction.overview()))
    for explanation in prediction.explanations:
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", explanation.label)
        path = folder / f"{stem}.{explanation.method}.{label}.png"
        path.write_bytes(png_bytes(prediction.overlay(explanation)))
        written.append(path)
    return written


def findings_table(tried: Tried) -> str:
    """One file's findings as terminal lines (``cxrnode predict --format table``)."""
    if tried.prediction is None:
        return f"{tried.path}: refused ({tried.error.kind if tried.error else '?'}): {tried.error}"
    p = tried.prediction
    model = p.model
    lines = [
        f"{tried.path} ({p.format}, {p.display.shape[1]}x{p.display.shape[0]}), "
        f"model {model['name']} {model['version']}"
    ]
    width = max(len(f.name) for f in p.findings)
    for finding in p.findings:
        call = "PRESENT" if finding.present else "absent"
        lines.append(
            f"  {finding.name:<{width}}  {finding.probability:6.3f}  {call:<7}  "
            f"(threshold {finding.threshold:.3f})"
        )
    if p.report["given"] and not p.report["read"]:
        lines.append("  (report text given; this model reads none)")
    return "\n".join(lines)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB (or gray) uint8 image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def png_base64(rgb: np.ndarray) -> str:
    """:func:`png_bytes` as base64 text, for JSON and ``data:`` URIs."""
    return base64.b64encode(png_bytes(rgb)).decode("ascii")


class ServingModel:
    """The predictor the admin server tries uploads on: the node's own, once it has loaded it
    (:meth:`provide`), else the settings' model, loaded on the first request.

    Parameters
    ----------
    settings : Settings
        ``model`` and ``device`` for a predictor loaded here.
    """

    def __init__(self, settings: Settings, predictor: Predictor | None = None) -> None:
        self.settings = settings
        self._predictor = predictor
        self._lock = threading.Lock()

    def provide(self, predictor: Predictor) -> None:
        """Serve with ``predictor`` (the node's worker's, shared: its calls are serialised)."""
        with self._lock:
            self._predictor = predictor

    def get(self) -> Predictor:
        """The predictor, loaded once on first use when none was provided.

        Raises
        ------
        StartupError
            If the settings' model cannot be loaded.
        """
        with self._lock:
            if self._predictor is None:
                from node.startup import load_model

                self._predictor = load_model(self.settings)
            return self._predictor


def _by_probability(finding: Finding) -> float:
    return -finding.probability


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "name": finding.name,
        "probability": round(finding.probability, 6),
        "threshold": round(finding.threshold, 6),
        "present": finding.present,
        "code": {
            "value": finding.code_value,
            "scheme": finding.coding_scheme,
            "meaning": finding.code_meaning,
        },
    }


def _attention_json(attention: AttentionMaps) -> dict[str, Any]:
    """The fusion's weights: the tokens, the image grid's shape, and per grid cell (row-major)
    its weight on each token, each row summing to 1."""
    return {
        "tokens": list(attention.tokens),
        "grid": list(attention.grid.maps.shape[1:]),
        "weights": np.round(attention.weights, 5).tolist(),
    }


def _region_json(region: HeatRegion | None, number: int | None) -> dict[str, Any] | None:
    if region is None:
        return None
    return {
        "number": number,
        "level": region.level,
        "peak": [round(v, 2) for v in region.peak],
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in region.points],
    }
