"""Batched inference and Grad-CAM over a loaded model package.

On a GPU the predictor runs under autocast (bfloat16 by default), with channels-last images
copied from page-locked memory without blocking, and optionally ``torch.compile``s the image
encoder; on the CPU it runs in float32. Report texts are cleaned with the package's own
options and padded per batch, never to a fixed length.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.encoders.text import PADDINGS
from models.fusion import TextContext, pool_image
from models.gradcam import grad_cam
from models.network import TextBatch
from models.package import LoadedPackage
from models.preprocess import crop_region, to_model_input
from models.text import ReportText

MAX_BATCH = 32
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class Prediction:
    """The model's output for one image.

    Attributes
    ----------
    probabilities : numpy.ndarray
        ``(n_labels,)`` float32 sigmoid outputs, in the package's label order.
    present : numpy.ndarray
        ``(n_labels,)`` bool, probability at or above the label's threshold.
    embedding : numpy.ndarray
        ``(retrieval_dim,)`` float32 embedding for case retrieval
        (:meth:`models.network.CxrClassifier.retrieval_vector`): the joint image embedding
        where the package has a joint image-text space, else the fused embedding the head
        classified.
    image_embedding : numpy.ndarray or None
        ``(image_dim,)`` float32 pooled image features alone.
    text_embedding : numpy.ndarray or None
        ``(text_dim,)`` float32 pooled report features; ``None`` when the image had no report
        or the model reads none.
    text_used : bool
        Whether a report was read for this image.
    """

    probabilities: np.ndarray
    present: np.ndarray
    embedding: np.ndarray
    image_embedding: np.ndarray | None = None
    text_embedding: np.ndarray | None = None
    text_used: bool = False


@dataclass(frozen=True, eq=False)
class PreparedInputs:
    """Images and reports turned into the model's inputs once, for :meth:`Predictor.predict`
    and :meth:`Predictor.explain_many` alike (from :meth:`Predictor.prepare`).

    Attributes
    ----------
    images : torch.Tensor
        ``(N, C, S, S)`` model inputs on the predictor's device (channels-last where it runs
        so).
    sizes : tuple of (int, int)
        The display images' ``(rows, columns)``, which maps are drawn onto.
    context : TextContext or None
        The encoded reports (the "no report" embedding where there is none), on the device;
        ``None`` for an image-only model.
    """

    images: torch.Tensor
    sizes: tuple[tuple[int, int], ...]
    context: TextContext | None

    def __len__(self) -> int:
        return len(self.sizes)


@dataclass(frozen=True, eq=False)
class CamGrid:
    """One image's Grad-CAM maps at the target layer's grid, before they are resized onto
    the display image (from :meth:`Predictor.explain_on_grid`).

    Attributes
    ----------
    maps : numpy.ndarray
        ``(n_labels_explained, h, w)`` float32 in [0, 1], in the order the labels were asked.
    size : tuple of int
        The display image's ``(rows, columns)``.
    region : tuple of int
        ``(top, left, rows, columns)`` of the display the model saw
        (:func:`models.preprocess.crop_region`): the maps cover it, the rest of the image is 0.
    """

    maps: np.ndarray
    size: tuple[int, int]
    region: tuple[int, int, int, int]


class Predictor:
    """Runs a package's model: batched probabilities, and Grad-CAM maps on request.

    The predictor takes the package's model for its own: it moves it to ``device``, keeps it in
    eval mode and freezes its parameters (Grad-CAM needs gradients of activations, never of
    weights). Calls are serialised, so one predictor can be shared between threads.

    Parameters
    ----------
    package : LoadedPackage
        A package from :func:`models.package.load_package`.
    device : str or None
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` picks CUDA when available.
    num_threads : int or None
        If given, sets torch's intra-op CPU thread count (process-wide).
    precision : str
        ``"auto"`` (bfloat16 autocast on CUDA, float32 on the CPU), ``"bf16"``, ``"fp16"`` or
        ``"fp32"``. Reduced precision applies on CUDA only.
    channels_last : bool or None
        Channels-last memory format for images and convolutions; ``None``: on CUDA only.
    compile : bool
        ``torch.compile`` the image encoder for :meth:`predict` (Grad-CAM runs eagerly).
    text_padding : str
        ``"bucketed"`` (pad each batch's reports to its longest and encode them in
        length-sorted groups, each cut to its longest), ``"longest"`` (one pass padded to the
        batch's longest) or ``"max_length"`` (pad to the encoder's maximum, only to measure
        what dynamic padding saves); see :meth:`models.network.CxrClassifier.tokenize`.
    """

    def __init__(
        self,
        package: LoadedPackage,
        device: str | None = None,
        num_threads: int | None = None,
        *,
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        text_padding: str = "bucketed",
    ) -> None:
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto' or one of {sorted(PRECISIONS)}")
        if text_padding not in PADDINGS:
            raise ValueError(f"text_padding must be one of {PADDINGS}")
        self.package = package
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        on_cuda = self.device.type == "cuda"
        self.dtype = PRECISIONS["bf16" if precision == "auto" else precision] if on_cuda else None
        self.channels_last = on_cuda if channels_last is None else channels_last
        self.text_padding = text_padding
        self.model = package.model.to(self.device).eval()
        self.model.requires_grad_(False)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._image_forward = (
            torch.compile(self.model.image_encoder) if compile else self.model.image_encoder
        )
        self._spec = package.config.preprocessing
        self._cleaning = package.config.text_cleaning
        self._thresholds = np.asarray(package.config.thresholds, dtype=np.float32)
        self._lock = threading.Lock()

    @property
    def n_labels(self) -> int:
        """Number of labels the model predicts."""
        return len(self.package.config.labels)

    @property
    def uses_text(self) -> bool:
        """Whether the model reads report text."""
        return self.model.uses_text

    def predict(
        self,
        displays: Sequence[np.ndarray] | PreparedInputs,
        texts: Sequence[ReportText | str | None] | None = None,
    ) -> list[Prediction]:
        """Predict every label for each image, up to :data:`MAX_BATCH` images per pass.

        Parameters
        ----------
        displays : sequence of numpy.ndarray, or PreparedInputs
            2-D display images from :func:`models.preprocess.dicom_to_display`, or the same
            already prepared (:meth:`prepare`).
        texts : sequence of (str or None), optional
            Report per image as received (cleaned here): a :class:`models.text.ReportText`
            with the sections its feed stored (selected from, not split again), or plain text;
            ``None`` for no report. Image-only models ignore it. Must be None with prepared
            inputs.

        Returns
        -------
        list of Prediction
            One per image, in order.

        Raises
        ------
        ValueError
            If ``texts`` and ``displays`` differ in length, or texts come with prepared inputs.
        PreprocessingError
            If an image is not a finite 2-D array.
        """
        if not len(displays):
            return []
        prepared = self._prepared(displays, texts)
        results: list[Prediction] = []
        for start in range(0, len(prepared), MAX_BATCH):
            results.extend(self._predict_batch(prepared, start, start + MAX_BATCH))
        return results

    def prepare(
        self, displays: Sequence[np.ndarray], texts: Sequence[ReportText | str | None] | None = None
    ) -> PreparedInputs:
        """Preprocess images and encode reports once, for :meth:`predict` and
        :meth:`explain_many` (or :meth:`explain_on_grid`) of the same images.

        Parameters
        ----------
        displays, texts
            As for :meth:`predict`.

        Returns
        -------
        PreparedInputs
            What either method takes in place of ``displays`` (and ``texts``).

        Raises
        ------
        ValueError
            If ``texts`` and ``displays`` differ in length.
        PreprocessingError
            If an image is not a finite 2-D array.
        """
        if texts is not None and len(texts) != len(displays):
            raise ValueError(f"{len(displays)} images but {len(texts)} texts")
        inputs = [to_model_input(display, self._spec) for display in displays]
        size = self._spec.image_size
        images = (
            self._images(inputs)
            if inputs
            else torch.empty((0, self._spec.channels, size, size), device=self.device)
        )
        # Tokenizing holds the lock too: a fast tokenizer refuses concurrent calls. Not in
        # inference mode: Grad-CAM's backward pass reads the context too.
        with self._lock, torch.no_grad(), self._autocast():
            context = self.model.encode_text(self._text_batch(texts), len(inputs))
        return PreparedInputs(images, _sizes(displays), context)

    def _prepared(
        self,
        displays: Sequence[np.ndarray] | PreparedInputs,
        texts: Sequence[ReportText | str | None] | None,
    ) -> PreparedInputs:
        if not isinstance(displays, PreparedInputs):
            return self.prepare(displays, texts)
        if texts is not None:
            raise ValueError("prepared inputs carry their reports already; texts must be None")
        return displays

    def _predict_batch(self, prepared: PreparedInputs, start: int, stop: int) -> list[Prediction]:
        images = prepared.images[start:stop]
        context = _rows(prepared.context, range(start, min(stop, len(prepared))))
        with self._lock, torch.inference_mode(), self._autocast():
            image_map = self._image_forward(images)
            fused = self.model.fuse(image_map, context)
            logits = self.model.classify(fused)
            image_vectors = pool_image(image_map)
            retrieval = self.model.retrieval_vector(image_map, fused)
        probabilities = _numpy(torch.sigmoid(logits.float()))
        fused_np, image_np = _numpy(retrieval), _numpy(image_vectors)
        if context is None:
            text_np, used = [None] * len(images), [False] * len(images)
        else:
            pooled, used = _numpy(context.pooled), context.present.cpu().tolist()
            text_np = [row if ok else None for row, ok in zip(pooled, used, strict=True)]
        return [
            Prediction(p, p >= self._thresholds, f, i, t, bool(u))
            for p, f, i, t, u in zip(probabilities, fused_np, image_np, text_np, used, strict=True)
        ]

    def explain(
        self,
        display: np.ndarray,
        label_indices: Sequence[int],
        text: ReportText | str | None = None,
    ) -> np.ndarray:
        """Return a Grad-CAM map per requested label, on the display image's own pixel grid.

        Parameters
        ----------
        display : numpy.ndarray
            The 2-D display image, ``(H, W)``.
        label_indices : sequence of int
            Indices into the package's labels.
        text : ReportText, str or None
            The report, if any (see :meth:`predict`).

        Returns
        -------
        numpy.ndarray
            ``(len(label_indices), H, W)`` float32 maps in [0, 1]; each is scaled to its own
            maximum, so maps say where, not how strongly. Outside the region a package's
            ``crop`` gives the model (:func:`models.preprocess.crop_region`) maps are 0.

        Raises
        ------
        IndexError
            If a label index is out of range.
        """
        return self.explain_many([display], [label_indices], [text])[0]

    def explain_many(
        self,
        displays: Sequence[np.ndarray] | PreparedInputs,
        label_indices: Sequence[Sequence[int]],
        texts: Sequence[ReportText | str | None] | None = None,
    ) -> list[np.ndarray]:
        """Grad-CAM maps for several images at once (e.g. each image's positive labels).

        All (image, label) pairs are explained in batches of up to :data:`MAX_BATCH` rows;
        each report is encoded once, whatever the number of its image's labels.

        Parameters
        ----------
        displays : sequence of numpy.ndarray, or PreparedInputs
            2-D display images, or the same already prepared (:meth:`prepare`).
        label_indices : sequence of sequences of int
            The labels to explain, per image (may be empty).
        texts : sequence of (str or None), optional
            Report text per image; None with prepared inputs.

        Returns
        -------
        list of numpy.ndarray
            Per image, ``(len(its labels), H, W)`` float32 maps in [0, 1] (see :meth:`explain`).

        Raises
        ------
        ValueError
            If the argument lengths differ.
        IndexError
            If a label index is out of range.
        """
        wanted = self.checked_labels(displays, label_indices, texts)
        sizes = _sizes(displays)
        results = [
            np.zeros((len(w), *size), dtype=np.float32)
            for w, size in zip(wanted, sizes, strict=True)
        ]
        if not any(wanted):
            return results
        prepared = self._prepared(displays, texts)
        for chunk, cams in self._cams(prepared, wanted):
            for image in dict.fromkeys(image for image, _, _ in chunk):
                positions = [i for i, row in enumerate(chunk) if row[0] == image]
                slots = [chunk[i][1] for i in positions]
                results[image][slots] = self.on_display(cams[positions], sizes[image])
        return results

    def on_display(self, grids: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Draw maps at a grid over the model's input onto a display image of ``size``.

        Bilinear (half-pixel centres), onto the region the model saw (the package's ``crop``,
        :func:`models.preprocess.crop_region`), each rescaled to [0, 1] there; the rest of the
        image is 0. Grad-CAM's, Integrated Gradients' and attention maps are drawn alike.

        Parameters
        ----------
        grids : torch.Tensor or numpy.ndarray
            ``(n, h, w)`` maps (NaN reads as 0).
        size : tuple of int
            The display image's ``(rows, columns)``.

        Returns
        -------
        numpy.ndarray
            ``(n, rows, columns)`` float32 in [0, 1].
        """
        grids = torch.as_tensor(grids, device=self.device).float()
        top, left, rows, columns = crop_region(*size, self._spec.crop)
        whole = np.zeros((len(grids), *size), dtype=np.float32)
        if not len(grids):
            return whole
        maps = F.interpolate(
            grids.unsqueeze(1), size=(rows, columns), mode="bilinear", align_corners=False
        )[:, 0]
        maps = _rescale(torch.nan_to_num(maps, nan=0.0))
        whole[:, top : top + rows, left : left + columns] = maps.cpu().numpy()
        return whole

    def explain_on_grid(
        self,
        displays: Sequence[np.ndarray] | PreparedInputs,
        label_indices: Sequence[Sequence[int]],
        texts: Sequence[ReportText | str | None] | None = None,
    ) -> list[CamGrid]:
        """:meth:`explain_many`'s maps before they are resized onto the display images: at the
        target layer's grid, kilobytes where a map on a 1024² display is 4 MB.

        Resized bilinearly (half-pixel centres) onto the region :class:`CamGrid` names and
        rescaled to [0, 1] there, they are :meth:`explain_many`'s maps
        (``node.results.heatmap.GridHeatmap`` does so without torch).

        Parameters
        ----------
        displays, label_indices, texts
            As for :meth:`explain_many`.

        Returns
        -------
        list of CamGrid
            One per image; an image without labels to explain has ``(0, 0, 0)`` maps.

        Raises
        ------
        ValueError
            If the argument lengths differ.
        IndexError
            If a label index is out of range.
        """
        wanted = self.checked_labels(displays, label_indices, texts)
        sizes = _sizes(displays)
        grids: list[list[np.ndarray]] = [[] for _ in wanted]
        prepared = self._prepared(displays, texts) if any(wanted) else None
        for chunk, cams in self._cams(prepared, wanted) if prepared is not None else ():
            for (image, _, _), cam in zip(chunk, torch.nan_to_num(cams, nan=0.0), strict=True):
                grids[image].append(cam.cpu().numpy())
        return [
            CamGrid(
                np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32),
                size,
                crop_region(*size, self._spec.crop),
            )
            for maps, size in zip(grids, sizes, strict=True)
        ]

    def checked_labels(
        self,
        displays: Sequence[np.ndarray] | PreparedInputs,
        label_indices: Sequence[Sequence[int]],
        texts: Sequence[ReportText | str | None] | None = None,
    ) -> list[list[int]]:
        """The labels to explain per image, as ints, once the arguments are checked.

        Raises
        ------
        ValueError
            If the argument lengths differ.
        IndexError
            If a label index is out of range.
        """
        if len(label_indices) != len(displays):
            raise ValueError(f"{len(displays)} images but {len(label_indices)} label lists")
        if texts is not None and len(texts) != len(displays):
            raise ValueError(f"{len(displays)} images but {len(texts)} texts")
        wanted = [[int(index) for index in labels] for labels in label_indices]
        bad = sorted({i for labels in wanted for i in labels if not 0 <= i < self.n_labels})
        if bad:
            raise IndexError(f"label indices {bad} out of range for {self.n_labels} labels")
        return wanted

    def _cams(
        self, prepared: PreparedInputs, wanted: list[list[int]]
    ) -> Iterator[tuple[list[tuple[int, int, int]], torch.Tensor]]:
        """(rows, their maps at the target layer's grid) per batch of up to MAX_BATCH
        (image, position among the image's requested labels, label) rows, in that order."""
        rows = [
            (image, slot, label) for image, w in enumerate(wanted) for slot, label in enumerate(w)
        ]
        for start in range(0, len(rows), MAX_BATCH):
            chunk = rows[start : start + MAX_BATCH]
            with self._lock:
                cams = self._grad_cam(chunk, prepared)
            yield chunk, cams

    def _grad_cam(
        self, chunk: list[tuple[int, int, int]], prepared: PreparedInputs
    ) -> torch.Tensor:
        images, rows_context = self.rows_of(prepared, [image for image, _, _ in chunk])
        labels = torch.tensor([label for _, _, label in chunk], device=self.device)
        model = self.model

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return model.classify(model.fuse(model.image_encoder(batch), rows_context))

        with self._autocast():
            return grad_cam(forward, model.target_layer(), images, labels)

    def rows_of(
        self, prepared: PreparedInputs, images: Sequence[int]
    ) -> tuple[torch.Tensor, TextContext | None]:
        """The model inputs and text context of the given images of ``prepared``, in that
        order (an image may repeat: once per label to explain)."""
        index = torch.tensor(list(images), device=self.device, dtype=torch.long)
        rows = prepared.images.index_select(0, index)
        if self.channels_last:
            rows = rows.contiguous(memory_format=torch.channels_last)
        return rows, _rows(prepared.context, list(images))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the predictor (calls are serialised) under its precision, for an explanation
        method that runs the model itself (``models.attribution``)."""
        with self._lock, self._autocast():
            yield

    def _images(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        images = torch.stack(list(tensors))
        if self.device.type == "cuda":
            images = images.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images.to(self.device)

    def _text_batch(self, texts: Sequence[ReportText | str | None] | None) -> TextBatch | None:
        if texts is None or not self.model.uses_text:
            return None
        batch = self.model.tokenize([self._cleaning(text) for text in texts], self.text_padding)
        if batch is None:
            return None
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def _autocast(self) -> AbstractContextManager[object]:
        # bfloat16 halves activation memory on GPUs without the overflow risk of float16; the
        # CPU stays in float32, where autocast would only cost accuracy.
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def labels_to_explain(prediction: Prediction) -> list[int]:
    """The labels the node explains on an image: every present one, and the top one even
    when absent (for the overview), in label order."""
    top = int(np.argmax(prediction.probabilities))
    return sorted({top, *(int(i) for i in np.flatnonzero(prediction.present))})


def _sizes(displays: Sequence[np.ndarray] | PreparedInputs) -> tuple[tuple[int, int], ...]:
    if isinstance(displays, PreparedInputs):
        return displays.sizes
    # Of any shape: a display that is not 2-D is refused by its preprocessing.
    return tuple(tuple(np.asarray(display).shape[:2]) for display in displays)


def _rows(context: TextContext | None, rows: Sequence[int]) -> TextContext | None:
    """The context of the given image rows, in that order."""
    if context is None:
        return None
    if list(rows) == list(range(len(context.present))):
        return context
    return context.select(torch.tensor(list(rows), device=context.pooled.device))


def _rescale(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``(h, w)`` map to [0, 1] again: interpolation may miss the grid's peak."""
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return (maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-7)).clamp_(0.0, 1.0)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().astype(np.float32, copy=False)
