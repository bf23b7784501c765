"""Batched inference and Grad-CAM over a loaded model package."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from models.package import LoadedPackage
from models.preprocess import clean_report_text, to_model_input

MAX_BATCH = 32


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
        ``(embedding_dim,)`` float32 fused embedding the head classified.
    """

    probabilities: np.ndarray
    present: np.ndarray
    embedding: np.ndarray


class _ImageOnly(nn.Module):
    """The classifier seen as a function of images alone, for Grad-CAM's single-input API.

    The model's weights are frozen, so the input is made to require gradients: that puts the
    target layer's activations on a differentiable path without computing any weight gradient.
    """

    def __init__(self, model: nn.Module, text_features: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.text_features = text_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().requires_grad_(True)
        text = self.text_features
        if text is not None:
            text = text.expand(images.shape[0], -1)
        return self.model(images, text)


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
    """

    def __init__(
        self, package: LoadedPackage, device: str | None = None, num_threads: int | None = None
    ) -> None:
        self.package = package
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.model = package.model.to(self.device).eval()
        self.model.requires_grad_(False)
        self._spec = package.config.preprocessing
        self._thresholds = np.asarray(package.config.thresholds, dtype=np.float32)
        self._lock = threading.Lock()

    @property
    def n_labels(self) -> int:
        """Number of labels the model predicts."""
        return len(self.package.config.labels)

    def predict(
        self, displays: Sequence[np.ndarray], texts: Sequence[str | None] | None = None
    ) -> list[Prediction]:
        """Predict every label for each image, all images in one forward pass.

        Parameters
        ----------
        displays : sequence of numpy.ndarray
            2-D display images from :func:`models.preprocess.dicom_to_display`.
        texts : sequence of (str or None), optional
            Report text per image; ``None`` for no report. Image-only models ignore it.

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
        NotImplementedError
            If report text is given to a model with a text input (no text encoder yet).
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
        self, displays: Sequence[np.ndarray], texts: Sequence[str | None] | None
    ) -> list[Prediction]:
        images = torch.stack([to_model_input(display, self._spec) for display in displays])
        text_features = self._text_features(texts)
        with self._lock, torch.inference_mode(), self._autocast():
            embedding = self.model.embed(images.to(self.device), text_features)
            logits = self.model.classify(embedding)
        probabilities = torch.sigmoid(logits.float()).cpu().numpy().astype(np.float32)
        embedding_np = embedding.float().cpu().numpy().astype(np.float32)
        return [
            Prediction(p, p >= self._thresholds, e)
            for p, e in zip(probabilities, embedding_np, strict=True)
        ]

    def explain(
        self, display: np.ndarray, label_indices: Sequence[int], text: str | None = None
    ) -> np.ndarray:
        """Return a Grad-CAM map per requested label, on the display image's own pixel grid.

        All labels are explained in one Grad-CAM call: the image is repeated once per label.

        Parameters
        ----------
        display : numpy.ndarray
            The 2-D display image, ``(H, W)``.
        label_indices : sequence of int
            Indices into the package's labels.
        text : str or None
            The report, if any (see :meth:`predict`).

        Returns
        -------
        numpy.ndarray
            ``(len(label_indices), H, W)`` float32 maps in [0, 1]; each is scaled to its own
            maximum, so maps say where, not how strongly.

        Raises
        ------
        IndexError
            If a label index is out of range.
        """
        indices = [int(index) for index in label_indices]
        height, width = np.asarray(display).shape[:2]
        if not indices:
            return np.zeros((0, height, width), dtype=np.float32)
        bad = [index for index in indices if not 0 <= index < self.n_labels]
        if bad:
            raise IndexError(f"label indices {bad} out of range for {self.n_labels} labels")

        image = to_model_input(display, self._spec).to(self.device)
        images = image.unsqueeze(0).expand(len(indices), -1, -1, -1).contiguous()
        text_features = self._text_features(None if text is None else [text])
        wrapper = _ImageOnly(self.model, text_features)
        with self._lock, torch.enable_grad():
            cam = GradCAM(model=wrapper, target_layers=[self.model.target_layer()])
            # Not used as a context manager: its __exit__ swallows IndexError.
            try:
                maps = cam(
                    input_tensor=images,
                    targets=[ClassifierOutputTarget(index) for index in indices],
                )
            finally:
                cam.activations_and_grads.release()
        grid = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
        upsampled = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        result = upsampled[:, 0].numpy()
        return np.clip(np.nan_to_num(result, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)

    def _text_features(self, texts: Sequence[str | None] | None) -> torch.Tensor | None:
        cleaned = [clean_report_text(text) for text in texts] if texts is not None else []
        if self.model.text_dim == 0 or all(text is None for text in cleaned):
            # Image-only models ignore reports; text models use their learned no-report input.
            return None
        raise NotImplementedError(
            f"model {self.package.config.package_id} takes report text but cxrnode has no text "
            "encoder yet"
        )

    def _autocast(self) -> torch.autocast:
        # bfloat16 halves activation memory on GPUs without the overflow risk of float16; CPU
        # stays in float32, where autocast would only cost accuracy.
        return torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        )
