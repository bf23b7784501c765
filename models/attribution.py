"""Explanations as seed 003 gives them: Grad-CAM, Integrated Gradients and cross-attention maps.

One entry point, :func:`explain`, returns for each image the maps of the methods asked for, on
the display image's pixel grid (as :meth:`models.predictor.Predictor.explain_many` draws
Grad-CAM's), and, for a model that reads reports, which words pushed each finding:

- ``"gradcam"``: the predictor's Grad-CAM (:mod:`models.gradcam`).
- ``"integrated_gradients"`` (Sundararajan et al., 2017, with Captum): the path integral of the
  label's logit's gradient from a **baseline** to the image, times the difference. The baseline
  is the normalised black image (a display of zeros through :func:`models.preprocess.
  to_model_input`: what the model sees of "no anatomy"), with the same report context, so the
  attributions explain the image's part of the logit. A pixel's saliency is the sum over the
  input channels, positive part (evidence for the label, as Grad-CAM's ReLU keeps), divided by
  its map's 99th percentile of positive values and clipped to [0, 1]: IG's few extreme pixels
  would otherwise leave the rest of a max-scaled map black. For a text-reading model the same
  method runs on the report (Captum's ``LayerIntegratedGradients`` over the text encoder's
  token embeddings, baseline: padding in place of every word piece, special tokens kept;
  for the seed-002 word-id encoder, over its first layer's input, baseline: all padding), and
  the token attributions, signed, are summed from word pieces back to words.
- ``"attention"``: the cross-attention fusion's weights (averaged over the heads), image-grid
  tokens × report tokens, and a map on the image per report token. Only models with
  ``"fusion": "cross_attention"`` have them; the default inference path never computes them.

Integrated Gradients costs ``steps`` forward and backward passes per (image, label) where
Grad-CAM costs one: :data:`DEFAULT_STEPS` was chosen by measuring the convergence delta
(``benchmarks/explanations.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.encoders.text import HfTextEncoder, TokenFfnTextEncoder, split_words
from models.fusion import CrossAttentionFusion, TextContext
from models.network import TextBatch
from models.predictor import MAX_BATCH, CamGrid, Predictor, PreparedInputs
from models.preprocess import crop_region, to_model_input
from models.text import ReportText

METHODS = ("gradcam", "integrated_gradients", "attention")
# Riemann/Gauss-Legendre steps of the path integral (see the module docstring).
DEFAULT_STEPS = 32
# A saliency map is scaled by this percentile of its positive values.
SALIENCY_PERCENTILE = 99.0
# (image, label) rows explained together: Captum runs their steps MAX_BATCH rows at a time, so
# each forward pass holds 4 steps of 8 rows.
_IG_ROWS = MAX_BATCH // 4


@dataclass(frozen=True)
class WordAttribution:
    """How much one word of the report pushed a label's logit (IG, signed: < 0 pulled)."""

    word: str
    score: float


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class AttentionMaps:
    """One image's cross-attention over its report's tokens.

    Attributes
    ----------
    tokens : tuple of str
        The report's tokens as the encoder reads them (word pieces, special tokens
        included); ``("[no report]",)`` where there was none.
    weights : numpy.ndarray
        ``(h * w, len(tokens))`` float32, row-major over the image grid; each row sums to 1.
    grid : CamGrid
        Per token, its weights over the image grid scaled to [0, 1] (``maps`` is
        ``(len(tokens), h, w)``), to be drawn as Grad-CAM's are (:meth:`Predictor.on_display`
        or ``node.results.heatmap.GridHeatmap``).
    """

    tokens: tuple[str, ...]
    weights: np.ndarray
    grid: CamGrid


@dataclass(frozen=True, eq=False)
class Explanation:
    """The explanations of one image, for the labels asked, in the order asked.

    Attributes
    ----------
    labels : tuple of int
        The explained label indices.
    maps : dict of str to numpy.ndarray
        Method (``"gradcam"``, ``"integrated_gradients"``) to ``(len(labels), H, W)`` float32
        maps in [0, 1] on the display image, 0 outside the region the model saw.
    words : tuple of tuple of WordAttribution, or None
        Per label, the report's words with their IG attributions, in reading order; ``None``
        unless IG was asked of a text-reading model with the report given.
    attention : AttentionMaps or None
        With ``"attention"`` on a cross-attention model.
    convergence_delta : numpy.ndarray or None
        ``(len(labels),)``: the image IG's sum of attributions minus the logit's change from
        baseline to image (Captum's completeness check; small next to the logits is good).
    """

    labels: tuple[int, ...]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    words: tuple[tuple[WordAttribution, ...], ...] | None = None
    attention: AttentionMaps | None = None
    convergence_delta: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class ImageAttributions:
    """Integrated Gradients of one image's labels, before they become maps.

    Attributes
    ----------
    attributions : numpy.ndarray
        ``(n_labels_explained, C, S, S)`` float32 on the model's input.
    delta : numpy.ndarray
        ``(n_labels_explained,)`` convergence delta per label.
    """

    attributions: np.ndarray
    delta: np.ndarray


def explain(
    predictor: Predictor,
    prepared: PreparedInputs,
    label_indices: Sequence[Sequence[int]],
    methods: Sequence[str] = METHODS,
    *,
    texts: Sequence[ReportText | str | None] | None = None,
    steps: int = DEFAULT_STEPS,
) -> list[Explanation]:
    """Explain the given labels of each prepared image by each method asked.

    Parameters
    ----------
    predictor : Predictor
        The package's predictor.
    prepared : PreparedInputs
        The images (and reports), from :meth:`Predictor.prepare`.
    label_indices : sequence of sequences of int
        The labels to explain, per image (may be empty).
    methods : sequence of str
        Some of :data:`METHODS`; ``"attention"`` is skipped for a model without
        cross-attention fusion.
    texts : sequence of (ReportText, str or None), optional
        The reports given to :meth:`Predictor.prepare`, for the word attributions and the
        attention's token names (without them: no words, tokens numbered).
    steps : int
        Integrated Gradients' steps.

    Returns
    -------
    list of Explanation
        One per image.

    Raises
    ------
    ValueError
        If a method is unknown, ``steps`` < 1, or the argument lengths differ.
    IndexError
        If a label index is out of range.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown explanation methods {unknown}; known: {list(METHODS)}")
    if texts is not None and len(texts) != len(prepared):
        raise ValueError(f"{len(prepared)} images but {len(texts)} texts")
    wanted = [tuple(labels) for labels in predictor.checked_labels(prepared, label_indices)]
    maps: list[dict[str, np.ndarray]] = [{} for _ in wanted]
    if "gradcam" in methods:
        for image, cams in enumerate(predictor.explain_many(prepared, wanted)):
            maps[image]["gradcam"] = cams
    deltas: list[np.ndarray | None] = [None] * len(wanted)
    words: list[tuple[tuple[WordAttribution, ...], ...] | None] = [None] * len(wanted)
    if "integrated_gradients" in methods:
        grids, attributions = integrated_gradients_on_grid(predictor, prepared, wanted, steps)
        for image, (grid, result) in enumerate(zip(grids, attributions, strict=True)):
            maps[image]["integrated_gradients"] = predictor.on_display(grid.maps, grid.size)
            deltas[image] = result.delta
        if texts is not None and predictor.uses_text:
            words = [
                tuple(
                    word_attributions(predictor, prepared, image, text, label, steps)
                    for label in labels
                )
                if text is not None
                else None
                for image, (labels, text) in enumerate(zip(wanted, texts, strict=True))
            ]
    attention: list[AttentionMaps | None] = [None] * len(wanted)
    if "attention" in methods and isinstance(predictor.model.fusion, CrossAttentionFusion):
        attention = attention_maps(predictor, prepared, texts)
    return [
        Explanation(labels, m, w, a, d)
        for labels, m, w, a, d in zip(wanted, maps, words, attention, deltas, strict=True)
    ]


# --- Integrated Gradients on the image ---------------------------------------------------------


def black_baseline(predictor: Predictor) -> torch.Tensor:
    """The IG baseline: a black display through the package's preprocessing, ``(C, S, S)``."""
    spec = predictor.package.config.preprocessing
    black = np.zeros((spec.image_size, spec.image_size), dtype=np.float32)
    return to_model_input(black, spec).to(predictor.device)


def image_attributions(
    predictor: Predictor,
    prepared: PreparedInputs,
    label_indices: Sequence[Sequence[int]],
    steps: int = DEFAULT_STEPS,
) -> list[ImageAttributions]:
    """Integrated Gradients of each image's labels' logits with respect to its pixels.

    Parameters
    ----------
    predictor, prepared, label_indices, steps
        As for :func:`explain`.

    Returns
    -------
    list of ImageAttributions
        One per image; ``sum(attributions[k]) - delta[k]`` is the logit's change from the
        baseline to the image.

    Raises
    ------
    ValueError
        If ``steps`` < 1 or the lengths differ.
    IndexError
        If a label index is out of range.
    """
    from captum.attr import IntegratedGradients

    if steps < 1:
        raise ValueError(f"integrated gradients needs steps >= 1, not {steps}")
    wanted = predictor.checked_labels(prepared, label_indices)
    size = prepared.images.shape[1:]
    results = [
        [np.zeros((len(w), *size), np.float32), np.zeros(len(w), np.float32)] for w in wanted
    ]
    baseline = black_baseline(predictor)
    model = predictor.model
    for chunk in _chunks(wanted):
        images, context = predictor.rows_of(prepared, [image for image, _, _ in chunk])
        labels = torch.tensor([label for _, _, label in chunk], device=predictor.device)

        def forward(batch: torch.Tensor, *text: torch.Tensor) -> torch.Tensor:
            return model.classify(model.fuse(model.image_encoder(batch), _context(text)))

        with predictor.exclusive(), torch.enable_grad():
            attributions, delta = IntegratedGradients(forward).attribute(
                images,
                baselines=baseline.expand_as(images).contiguous(),
                target=labels,
                additional_forward_args=_context_tensors(context),
                n_steps=steps,
                internal_batch_size=MAX_BATCH,
                return_convergence_delta=True,
            )
        attributions, delta = _numpy(attributions), _numpy(delta)
        for row, (image, slot, _) in enumerate(chunk):
            results[image][0][slot] = attributions[row]
            results[image][1][slot] = delta[row]
    return [ImageAttributions(a, d) for a, d in results]


def integrated_gradients_on_grid(
    predictor: Predictor,
    prepared: PreparedInputs,
    label_indices: Sequence[Sequence[int]],
    steps: int = DEFAULT_STEPS,
) -> tuple[list[CamGrid], list[ImageAttributions]]:
    """IG saliency maps at the model's input grid, as :meth:`Predictor.explain_on_grid` gives
    Grad-CAM's: ``maps`` are ``(n, S, S)`` in [0, 1] over the region the model saw.

    Returns
    -------
    tuple of (list of CamGrid, list of ImageAttributions)
        The maps, and the attributions they were made of.
    """
    results = image_attributions(predictor, prepared, label_indices, steps)
    crop = predictor.package.config.preprocessing.crop
    grids = [
        CamGrid(saliency(result.attributions), size, crop_region(*size, crop))
        for result, size in zip(results, prepared.sizes, strict=True)
    ]
    return grids, results


def saliency(attributions: np.ndarray) -> np.ndarray:
    """``(n, C, S, S)`` attributions to ``(n, S, S)`` maps in [0, 1] (see the module docstring).

    Parameters
    ----------
    attributions : numpy.ndarray
        Pixel attributions, one row per explained label.

    Returns
    -------
    numpy.ndarray
        float32; a map without positive evidence is all 0.
    """
    maps = np.clip(np.asarray(attributions, dtype=np.float32).sum(axis=1), 0.0, None)
    for heat in maps:
        positive = heat[heat > 0]
        if positive.size:
            heat /= max(float(np.percentile(positive, SALIENCY_PERCENTILE)), 1e-12)
    return np.clip(maps, 0.0, 1.0)


# --- Integrated Gradients on the report --------------------------------------------------------


def word_attributions(
    predictor: Predictor,
    prepared: PreparedInputs,
    image: int,
    text: ReportText | str,
    label: int,
    steps: int = DEFAULT_STEPS,
) -> tuple[WordAttribution, ...]:
    """Which words of an image's report pushed a label's logit: IG over the text encoder's
    token embeddings (see the module docstring), word pieces summed into words.

    Parameters
    ----------
    predictor, prepared
        As for :func:`explain`.
    image : int
        The image of ``prepared`` whose report this is.
    text : ReportText or str
        That report as given to :meth:`Predictor.prepare` (cleaned here as there).
    label : int
        The label index.
    steps : int
        IG steps.

    Returns
    -------
    tuple of WordAttribution
        The words in reading order (those the encoder reads: a long report is truncated).

    Raises
    ------
    ValueError
        If the model reads no text.
    """
    from captum.attr import LayerIntegratedGradients

    model, encoder = predictor.model, predictor.model.text_encoder
    if encoder is None:
        raise ValueError("this model reads no report text")
    cleaned = predictor.package.config.text_cleaning(text)
    batch = model.tokenize([cleaned], "longest")
    assert batch is not None
    inputs = {key: value.to(predictor.device) for key, value in batch.inputs.items()}
    ids = inputs.pop("input_ids")
    names = sorted(inputs)
    if isinstance(encoder, HfTextEncoder):
        layer, to_input = encoder.model.get_input_embeddings(), False
        special = torch.tensor(encoder.tokenizer.all_special_ids, device=ids.device)
        pad = encoder.tokenizer.pad_token_id or 0
        baseline = torch.where(torch.isin(ids, special), ids, torch.full_like(ids, pad))
        words, word_of = encoder.word_of_tokens(cleaned)
        differentiable = encoder.differentiable()
    elif isinstance(encoder, TokenFfnTextEncoder):
        layer, to_input = encoder.net[0], True
        baseline = torch.zeros_like(ids)
        words = split_words(cleaned)[: encoder.max_length]
        word_of = [n if n < len(words) else None for n in range(ids.shape[1])]
        differentiable = torch.enable_grad()
    else:
        raise ValueError(f"no word attributions for a {type(encoder).__name__}")
    with predictor.exclusive(), torch.no_grad():
        images, _ = predictor.rows_of(prepared, [image])
        image_map = model.image_encoder(images)

    def forward(token_ids: torch.Tensor, features: torch.Tensor, *rest: torch.Tensor):
        rows = token_ids.shape[0]
        present = torch.ones(rows, dtype=torch.bool, device=token_ids.device)
        given = {"input_ids": token_ids, **dict(zip(names, rest, strict=True))}
        text_batch = TextBatch(given, present)
        return model.classify(model.fuse(features, model.encode_text(text_batch, rows)))

    with predictor.exclusive(), differentiable, torch.enable_grad():
        attributions = LayerIntegratedGradients(forward, layer).attribute(
            ids,
            baselines=baseline,
            target=label,
            additional_forward_args=(image_map, *(inputs[name] for name in names)),
            n_steps=steps,
            internal_batch_size=MAX_BATCH,
            attribute_to_layer_input=to_input,
        )
    per_token = _numpy(attributions)[0]
    if per_token.ndim == 2:  # (T, embedding width): a token's share is the sum over its width
        per_token = per_token.sum(axis=1)
    scores = np.zeros(len(words), dtype=np.float64)
    for position, word in enumerate(word_of[: len(per_token)]):
        if word is not None:
            scores[word] += per_token[position]
    return tuple(WordAttribution(w, float(s)) for w, s in zip(words, scores, strict=True))


# --- Cross-attention maps ---------------------------------------------------------------------


def attention_maps(
    predictor: Predictor,
    prepared: PreparedInputs,
    texts: Sequence[ReportText | str | None] | None = None,
) -> list[AttentionMaps]:
    """The cross-attention fusion's weights of each image over its report's tokens.

    Parameters
    ----------
    predictor, prepared, texts
        As for :func:`explain`; ``texts`` only name the tokens.

    Returns
    -------
    list of AttentionMaps
        One per image.

    Raises
    ------
    ValueError
        If the model has no cross-attention fusion.
    """
    fusion = predictor.model.fusion
    if not isinstance(fusion, CrossAttentionFusion):
        raise ValueError("attention maps need a model with cross-attention fusion")
    crop = predictor.package.config.preprocessing.crop
    results = []
    for start in range(0, len(prepared), MAX_BATCH):
        rows = list(range(start, min(start + MAX_BATCH, len(prepared))))
        images, context = predictor.rows_of(prepared, rows)
        assert context is not None
        with predictor.exclusive(), torch.inference_mode():
            image_map = predictor.model.image_encoder(images)
            weights = _numpy(fusion.attention_weights(image_map, context))
        mask = context.mask.cpu().numpy()
        present = context.present.cpu().numpy()
        height, width = image_map.shape[2:]
        for row, image in enumerate(rows):
            real = weights[row][:, mask[row]]
            text = texts[image] if texts is not None else None
            tokens = _token_names(predictor, text, real.shape[1], bool(present[row]))
            grids = real.T.reshape(len(tokens), height, width).copy()
            grids -= grids.min(axis=(1, 2), keepdims=True)
            grids /= grids.max(axis=(1, 2), keepdims=True) + 1e-7
            size = prepared.sizes[image]
            grid = CamGrid(grids, size, crop_region(*size, crop))
            results.append(AttentionMaps(tokens, real, grid))
    return results


def _token_names(
    predictor: Predictor, text: ReportText | str | None, count: int, present: bool
) -> tuple[str, ...]:
    if not present:
        return ("[no report]",)
    encoder = predictor.model.text_encoder
    if text is not None and isinstance(encoder, HfTextEncoder):
        batch = predictor.model.tokenize([predictor.package.config.text_cleaning(text)])
        assert batch is not None
        tokens = encoder.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0].tolist())
        if len(tokens) >= count:
            return tuple(tokens[:count])
    if isinstance(encoder, TokenFfnTextEncoder):
        return ("[report]",)
    return tuple(f"token {n}" for n in range(count))


# --- shared -----------------------------------------------------------------------------------


def _chunks(wanted: list[list[int]]) -> Iterator[list[tuple[int, int, int]]]:
    """(image, slot, label) rows, a few at a time: each becomes ``steps`` forward rows."""
    rows = [(image, slot, label) for image, w in enumerate(wanted) for slot, label in enumerate(w)]
    for start in range(0, len(rows), _IG_ROWS):
        yield rows[start : start + _IG_ROWS]


def _context_tensors(context: TextContext | None) -> tuple[torch.Tensor, ...] | None:
    # Captum repeats tensor arguments once per step, row for row with the images.
    if context is None:
        return None
    return (context.tokens, context.mask, context.pooled, context.present)


def _context(tensors: tuple[torch.Tensor, ...]) -> TextContext | None:
    return TextContext(*tensors) if tensors else None


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
