"""Batched inference and Grad-CAM over a loaded model package.

On a GPU the predictor runs under autocast (bfloat16 by default), with channels-last images
copied from page-locked memory without blocking, and optionally ``torch.compile``s the image
encoder; on the CPU it runs in float32. Report texts are cleaned with the package's own
options and padded per batch, never to a fixed length.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
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
        ``(embedding_dim,)`` float32 fused embedding the head classified (for retrieval).
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
        self, displays: Sequence[np.ndarray], texts: Sequence[ReportText | str | None] | None = None
    ) -> list[Prediction]:
        """Predict every label for each image, up to :data:`MAX_BATCH` images per pass.

        Parameters
        ----------
        displays : sequence of numpy.ndarray
            2-D display images from :func:`models.preprocess.dicom_to_display`.
        texts : sequence of (str or None), optional
            Report per image as received (cleaned here): a :class:`models.text.ReportText`
            with the sections its feed stored (selected from, not split again), or plain text;
            ``None`` for no report.
            Image-only models ignore it.

        Returns
        -------
        list of Prediction
            One per image, in order.

        Raises
        ------
        ValueError
            If ``texts`` and ``displays`` differ in length.
        PreprocessingError
            If an image is not a finite 2-D array.
        """
        if not displays:
            return []
        if texts is not None and len(texts) != len(displays):
            raise ValueError(f"{len(displays)} images but {len(texts)} texts")
        results: list[Prediction] = []
        for start in range(0, len(displays), MAX_BATCH):
            stop = start + MAX_BATCH
            chunk_texts = None if texts is None else texts[start:stop]
            results.extend(self._predict_batch(displays[start:stop], chunk_texts))
        return results

    def _predict_batch(
        self, displays: Sequence[np.ndarray], texts: Sequence[ReportText | str | None] | None
    ) -> list[Prediction]:
        images = self._images([to_model_input(display, self._spec) for display in displays])
        # Tokenizing holds the lock too: a fast tokenizer refuses concurrent calls.
        with self._lock, torch.inference_mode(), self._autocast():
            text = self._text_batch(texts)
            image_map = self._image_forward(images)
            context = self.model.encode_text(text, len(displays))
            fused = self.model.fuse(image_map, context)
            logits = self.model.classify(fused)
            image_vectors = pool_image(image_map)
        probabilities = _numpy(torch.sigmoid(logits.float()))
        fused_np, image_np = _numpy(fused), _numpy(image_vectors)
        if context is None:
            text_np, used = [None] * len(displays), [False] * len(displays)
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
        displays: Sequence[np.ndarray],
        label_indices: Sequence[Sequence[int]],
        texts: Sequence[ReportText | str | None] | None = None,
    ) -> list[np.ndarray]:
        """Grad-CAM maps for several images at once (e.g. each image's positive labels).

        All (image, label) pairs are explained in batches of up to :data:`MAX_BATCH` rows;
        each report is encoded once, whatever the number of its image's labels.

        Parameters
        ----------
        displays : sequence of numpy.ndarray
            2-D display images.
        label_indices : sequence of sequences of int
            The labels to explain, per image (may be empty).
        texts : sequence of (str or None), optional
            Report per image (see :meth:`predict`).

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
        if len(label_indices) != len(displays):
            raise ValueError(f"{len(displays)} images but {len(label_indices)} label lists")
        if texts is not None and len(texts) != len(displays):
            raise ValueError(f"{len(displays)} images but {len(texts)} texts")
        wanted = [[int(index) for index in labels] for labels in label_indices]
        bad = sorted({i for labels in wanted for i in labels if not 0 <= i < self.n_labels})
        if bad:
            raise IndexError(f"label indices {bad} out of range for {self.n_labels} labels")
        sizes = [np.asarray(display).shape[:2] for display in displays]
        results = [
            np.zeros((len(w), *size), dtype=np.float32)
            for w, size in zip(wanted, sizes, strict=True)
        ]
        # (image, position among the image's requested labels, label)
        rows = [
            (image, slot, label) for image, w in enumerate(wanted) for slot, label in enumerate(w)
        ]
        if not rows:
            return results
        needed = sorted({image for image, _, _ in rows})
        inputs = {image: to_model_input(displays[image], self._spec) for image in needed}
        with self._lock:
            with torch.no_grad(), self._autocast():
                context = self.model.encode_text(self._text_batch(texts), len(displays))
            for start in range(0, len(rows), MAX_BATCH):
                chunk = rows[start : start + MAX_BATCH]
                cams = self._grad_cam(chunk, inputs, context)
                for image in dict.fromkeys(image for image, _, _ in chunk):
                    positions = [i for i, row in enumerate(chunk) if row[0] == image]
                    # The map covers what the model saw: the crop, if the package has one;
                    # the rest of the image stays 0.
                    top, left, rows, columns = crop_region(*sizes[image], self._spec.crop)
                    maps = F.interpolate(
                        cams[positions].unsqueeze(1),
                        size=(rows, columns),
                        mode="bilinear",
                        align_corners=False,
                    )[:, 0]
                    maps = _rescale(torch.nan_to_num(maps, nan=0.0))
                    slots = [chunk[i][1] for i in positions]
                    region = (slots, slice(top, top + rows), slice(left, left + columns))
                    results[image][region] = maps.cpu().numpy()
        return results

    def _grad_cam(
        self,
        chunk: list[tuple[int, int, int]],
        inputs: dict[int, torch.Tensor],
        context: TextContext | None,
    ) -> torch.Tensor:
        images = self._images([inputs[image] for image, _, _ in chunk])
        labels = torch.tensor([label for _, _, label in chunk], device=self.device)
        rows_context = None
        if context is not None:
            rows_context = context.select(
                torch.tensor([image for image, _, _ in chunk], device=context.pooled.device)
            )
        model = self.model

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return model.classify(model.fuse(model.image_encoder(batch), rows_context))

        with self._autocast():
            return grad_cam(forward, model.target_layer(), images, labels)

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


def _rescale(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``(h, w)`` map to [0, 1] again: interpolation may miss the grid's peak."""
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return (maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-7)).clamp_(0.0, 1.0)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().astype(np.float32, copy=False)
