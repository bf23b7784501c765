"""Inference throughput of each encoder combination: images/s and ms/study, with and without
Grad-CAM, at batch 1/8/32, on real IU X-ray report texts; and what padding reports to the
longest in the batch saves over padding them to 256 tokens.

Untrained models (speed does not depend on the weights) are saved as packages and loaded back,
so the numbers include everything the node runs per study: preprocessing of a 1024 x 1024
display image, report cleaning and tokenization, the forward pass, and for "grad-cam on" one
Grad-CAM map (the top label, as the node draws) per image, batched, upsampled to the display.

    .venv/bin/python benchmarks/inference.py [--quick] [--device cpu|cuda] [--compile]

On CUDA the predictor's defaults apply: bfloat16 autocast, channels-last, pinned memory.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.default import reference_config  # noqa: E402
from models.encoders.text import HfTextEncoder, WordVocabulary  # noqa: E402
from models.network import build_model  # noqa: E402
from models.package import load_package, save_package  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.text import TextCleaning, compose_report  # noqa: E402

SHARED = Path(os.environ.get("CXRNODE_SHARED_DATA", REPO.parent / "shared" / "data"))
REPORTS = SHARED / "iu-xray-openi-reports" / "indiana_reports.csv"
MINILM = {"kind": "hf", "path": "minilm", "pooling": "mean", "max_length": 256}
TOKEN_FFN = {"kind": "token_ffn", "vocab_size": 5000, "max_length": 100, "hidden": 128, "out": 64}


@dataclass(frozen=True)
class Combination:
    label: str
    architecture: dict


COMBINATIONS = (
    Combination("resnet18 | none", {"image_encoder": "resnet18"}),
    Combination(
        "resnet18 | minilm | concat", {"image_encoder": "resnet18", "text_encoder": MINILM}
    ),
    Combination(
        "resnet18 | token_ffn | concat", {"image_encoder": "resnet18", "text_encoder": TOKEN_FFN}
    ),
    Combination("densenet121 | none", {"image_encoder": "densenet121", "hidden_dim": 0}),
    Combination(
        "densenet121 | minilm | concat", {"image_encoder": "densenet121", "text_encoder": MINILM}
    ),
    Combination(
        "swin_t | minilm | cross_attn",
        {"image_encoder": "swin_t", "text_encoder": MINILM, "fusion": "cross_attention"},
    ),
)
QUICK = ("resnet18 | none", "resnet18 | minilm | concat", "swin_t | minilm | cross_attn")


def read_reports(path: Path) -> list[str]:
    """Findings + impression of every IU X-ray report that has either, as a headed report."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    cleaning = TextCleaning()
    reports = [
        compose_report({"findings": row["findings"], "impression": row["impression"]})
        for row in rows
    ]
    return [report for report in reports if cleaning(report)]


def package_for(combination: Combination, reports: list[str], directory: Path) -> Path:
    config = reference_config()
    torch.manual_seed(0)
    vocabulary = WordVocabulary.fit((TextCleaning()(r) or "" for r in reports), 5000)
    model = build_model(combination.architecture, len(config.labels), vocabulary=vocabulary)
    config = replace(config, name="benchmark", architecture=combination.architecture)
    path = directory / combination.label.replace(" | ", "-").replace(" ", "")
    save_package(model.eval(), config, path, "# benchmark model, untrained\n")
    return path


def timed(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Fastest of ``repeats`` runs after one warm-up run, in seconds.

    The minimum, as ``timeit`` reports it: on a shared machine other processes only ever add
    time, so the fastest run is the best estimate of what the code itself costs.
    """
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def study(predictor: Predictor, displays, texts, gradcam: bool) -> None:
    predictions = predictor.predict(displays, texts)
    if gradcam:
        top = [[int(np.argmax(p.probabilities))] for p in predictions]
        predictor.explain_many(displays, top, texts)


def throughput_table(args, reports, displays, device) -> None:
    chosen = [c for c in COMBINATIONS if not args.quick or c.label in QUICK]
    print(f"{'combination':32} {'batch':>5} {'grad-cam':>8} {'images/s':>9} {'ms/study':>9}")
    with tempfile.TemporaryDirectory(prefix="cxrnode-bench-") as scratch:
        for combination in chosen:
            package = load_package(package_for(combination, reports, Path(scratch)))
            predictor = Predictor(
                package, device=str(device), compile=args.compile, precision=args.precision
            )
            for batch in args.batches:
                # Few runs of the slow cells keep a full CPU run within ~10 minutes.
                repeats = {1: args.repeats + 2, 8: args.repeats}.get(batch, 1)
                texts = reports[:batch] if predictor.uses_text else None
                for gradcam in (False, True):
                    seconds = timed(
                        lambda p=predictor, b=batch, t=texts, g=gradcam: study(
                            p, displays[:b], t, g
                        ),
                        repeats,
                        device,
                    )
                    print(
                        f"{combination.label:32} {batch:5d} {'on' if gradcam else 'off':>8} "
                        f"{batch / seconds:9.1f} {1000 * seconds / batch:9.1f}",
                        flush=True,
                    )
            del predictor, package  # free the model before building the next


def padding_table(args, reports, displays, device) -> None:
    """MiniLM alone and the resnet18+MiniLM model end to end, per text padding."""
    batch = 32
    texts = reports[:batch]
    cleaned = [TextCleaning()(text) for text in texts]
    words = [len(text.split()) for text in cleaned]
    print(
        f"\nText padding, {batch} real IU X-ray reports (findings + impression, cleaned): "
        f"median {statistics.median(words):.0f} words, longest {max(words)}"
    )
    header = ("padding", "tokens/report", "encoder ms/report", "end-to-end ms/study")
    print(f"{header[0]:22} {header[1]:>13} {header[2]:>17} {header[3]:>19}")
    shown = {
        "max_length": "fixed 256",
        "longest": "longest in batch",
        "bucketed": "longest per 8 (sorted)",
    }
    combination = COMBINATIONS[1]
    with tempfile.TemporaryDirectory(prefix="cxrnode-bench-") as scratch:
        predictor = Predictor(
            load_package(package_for(combination, reports, Path(scratch))),
            device=str(device),
            precision=args.precision,
        )
        model = predictor.model
        for padding in ("max_length", "longest", "bucketed"):
            predictor.text_padding = padding
            batch_text = model.tokenize(cleaned, padding).to(device)
            mask = batch_text.inputs["attention_mask"]
            tokens = HfTextEncoder.padded_tokens(mask, batch_text.bucket_rows) / batch

            def encode(t=batch_text, m=model, dtype=predictor.dtype):
                with (
                    torch.inference_mode(),
                    torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
                ):
                    m.text_encoder(t.inputs, t.bucket_rows)

            encoder_s = timed(encode, args.repeats, device)
            end_to_end = timed(
                lambda p=predictor: p.predict(displays[:batch], texts), args.repeats, device
            )
            print(
                f"{shown[padding]:22} {tokens:13.0f} "
                f"{1000 * encoder_s / batch:17.1f} {1000 * end_to_end / batch:19.1f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 combinations, batch 1 and 8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--reports", type=Path, default=REPORTS, help="indiana_reports.csv")
    parser.add_argument("--skip-padding", action="store_true", help="no text padding table")
    parser.add_argument("--padding-only", action="store_true", help="only the padding table")
    args = parser.parse_args()
    args.batches = (1, 8) if args.quick else (1, 8, 32)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.reports.is_file():
        raise SystemExit(f"IU X-ray reports not found at {args.reports} (see --reports)")

    reports = read_reports(args.reports)
    rng = np.random.default_rng(0)
    displays = [rng.random((1024, 1024), dtype=np.float32) for _ in range(32)]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"cxrnode inference benchmark: {where}, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}, precision {args.precision}, compile {args.compile}; "
        f"1024x1024 displays -> 224x224; the first reports of {len(reports)} IU X-ray reports; "
        "fastest of repeated runs\n"
    )
    if not args.padding_only:
        throughput_table(args, reports, displays, device)
    if not args.skip_padding:
        padding_table(args, reports, displays, device)


if __name__ == "__main__":
    main()
