"""``cxrnode train`` and ``cxrnode evaluate``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any


def add_training_commands(commands: Any) -> None:
    """Add the ``train`` and ``evaluate`` subcommands to the ``cxrnode`` parser."""
    train = commands.add_parser(
        "train", help="train (or cross-validate) a model from a training config, export a package"
    )
    train.add_argument("--config", dest="run_config", type=Path, required=True, help="TOML file")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=1 (TOML value syntax)",
    )
    train.add_argument("--no-resume", action="store_true", help="ignore an earlier checkpoint")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a model package on a config's data")
    evaluate.add_argument("--config", dest="run_config", type=Path, required=True)
    evaluate.add_argument("--package", type=Path, required=True, help="model package directory")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    evaluate.add_argument("--set", dest="overrides", action="append", default=[])
    evaluate.add_argument(
        "--retrieval",
        action="store_true",
        help="also score case retrieval by embedding (P@5, mAP, MRR, DCG@5, query time)",
    )
    evaluate.add_argument(
        "--explanations",
        action="store_true",
        help="also score Grad-CAM against Integrated Gradients (Pearson, IoU of the top 5%%/20%%)"
        " and their overlap with RSNA boxes where the data has them",
    )
    evaluate.add_argument(
        "--ig-steps",
        type=int,
        default=None,
        metavar="N",
        help="Integrated Gradients' steps for --explanations (default: models.attribution's)",
    )
    evaluate.set_defaults(run=_evaluate)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=1", 'data.reader="manifest"']`` to nested tables."""
    tables: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"cxrnode: --set needs TABLE.KEY=VALUE, not {item!r}")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare word is a string
        *path, last = key.split(".")
        node = tables
        for part in path:
            node = node.setdefault(part, {})
        node[last] = parsed
    return tables


def _train(args: argparse.Namespace, settings: Any) -> int:
    from training.config import load_run_config
    from training.errors import TrainingError
    from training.run import run_crossval, run_train

    logging.getLogger("training").setLevel(logging.INFO)
    try:
        config = load_run_config(args.run_config, parse_overrides(args.overrides))
        if config.kind == "crossval":
            results = run_crossval(config)
            print((config.output / "report.md").read_text())
        else:
            results = run_train(config, resume=not args.no_resume)
            _print_train(results)
    except TrainingError as exc:
        print(f"cxrnode train: {exc}", file=sys.stderr)
        return 2
    print(f"results: {config.output / 'results.json'} ({results['seconds']} s)")
    return 0


def _print_train(results: dict[str, Any]) -> None:
    print(results["data"])
    for name, row in results["splits"].items():
        print(
            f"  {name}: {row['samples']} samples, {row['patients']} patients, "
            f"positives {row['positives']}"
        )
    if "semisupervised" in results:
        print(results["semisupervised"]["description"])
    print(
        f"best epoch {results['best_epoch']} of {results['epochs_run']} run, on {results['device']}"
    )
    for row in results["test"]["labels"]:
        print(
            f"  test {row['label']}: AUROC {row['auroc']:.3f} "
            f"({row['auroc_ci_low']:.3f}-{row['auroc_ci_high']:.3f}), "
            f"accuracy {row['accuracy']:.3f}, recall {row['recall']:.3f}, "
            f"specificity {row['specificity']:.3f} at {row['threshold']:.3f}"
        )
    if "package" in results:
        print(f"package: {results['package']}")
    leaked = results.get("leaked_samples_dropped", 0)
    if leaked > 0:
        print(f"dropped {leaked} val/test samples of patients in an earlier split")
    elif leaked < 0:
        print(f"WARNING: {-leaked} patients are in more than one split: metrics are inflated")


def _evaluate(args: argparse.Namespace, settings: Any) -> int:
    from training.config import load_run_config
    from training.errors import TrainingError
    from training.run import run_evaluate

    try:
        config = load_run_config(args.run_config, parse_overrides(args.overrides))
        if args.ig_steps is not None and args.ig_steps < 1:
            raise ValueError(f"--ig-steps must be at least 1, not {args.ig_steps}")
        results = run_evaluate(
            args.package,
            config,
            args.split,
            retrieval=args.retrieval,
            explanations=args.explanations,
            ig_steps=args.ig_steps,
        )
    except (TrainingError, ValueError) as exc:
        print(f"cxrnode evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0
