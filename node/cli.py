"""``cxrnode``: the node's one console command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from node.admin.commands import add_audit_command, cli_user, open_database
from node.config import describe, load_settings
from node.errors import CxrNodeError
from storage.actions import Action
from training.cli import add_training_commands


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        logging.basicConfig(
            level=getattr(logging, settings.log_level.upper(), logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # pynetdicom logs every association at INFO, Alembic each step of a migration.
        for chatty in ("pynetdicom", "alembic"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
        return args.run(args, settings)
    except CxrNodeError as exc:
        print(f"cxrnode: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrnode", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (or CXRNODE_CONFIG)")
    commands = parser.add_subparsers(required=True, metavar="command")

    serve = commands.add_parser("serve", help="run the node until SIGTERM")
    serve.set_defaults(run=_serve)

    config = commands.add_parser("config", help="print the effective settings as JSON")
    config.set_defaults(run=_config)

    add_audit_command(commands)
    add_training_commands(commands)
    _add_import_model(commands)
    _add_reprocess(commands)
    _add_similar(commands)
    _add_predict(commands)

    demo = commands.add_parser(
        "demo", help="start a private Orthanc and the node, send a synthetic study, show results"
    )
    demo.add_argument("--workdir", type=Path, help="keep Orthanc/node files here")
    demo.set_defaults(run=_demo)
    return parser


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="try a model on image files (DICOM, PNG, JPEG) without a PACS",
        description="Each file goes the way the node serves a received image; nothing is "
        "stored but the audit event of each file (model.predicted).",
    )
    predict.add_argument("files", nargs="+", type=Path, metavar="FILE")
    text = predict.add_mutually_exclusive_group()
    text.add_argument("--report", metavar="TEXT", help="report text read with every image")
    text.add_argument("--report-file", type=Path, metavar="F", help="the report text, from F")
    predict.add_argument(
        "--package",
        help='a package directory or archive, "default" or "reference" '
        "(default: the settings' model)",
    )
    predict.add_argument("--format", choices=("table", "json"), default="table")
    predict.add_argument(
        "--heatmap", type=Path, metavar="DIR", help="write the overlays of each file here (PNG)"
    )
    predict.add_argument(
        "--explain",
        action="append",
        choices=("gradcam", "integrated_gradients", "attention"),
        help="an explanation method, repeatable (default gradcam); integrated_gradients costs "
        "tens of forward passes a label and, for a model that reads the report, also scores "
        "its words; attention gives a cross-attention model's weights of image regions over "
        "the report's tokens",
    )
    predict.set_defaults(run=_predict)


def _predict(args, settings) -> int:
    from dataclasses import replace

    from node.predict import check_methods, findings_table, try_files
    from node.startup import load_model

    report = args.report
    if args.report_file is not None:
        try:
            report = args.report_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"cxrnode predict: --report-file {args.report_file}: {exc}", file=sys.stderr)
            return 2
    predictor = load_model(replace(settings, model=args.package or settings.model))
    methods = tuple(dict.fromkeys(args.explain or ["gradcam"]))
    try:
        check_methods(predictor, methods)
    except ValueError as exc:
        print(f"cxrnode predict: {exc}", file=sys.stderr)
        return 2
    many = len(args.files) > 1

    def progress(index: int, path: Path) -> None:
        print(f"[{index + 1}/{len(args.files)}] {path}", file=sys.stderr, flush=True)

    tried = []
    for one in try_files(
        predictor,
        args.files,
        report,
        settings,
        open_database(settings),
        actor_user=cli_user(),
        heatmap_dir=args.heatmap,
        progress=progress if many else None,
        methods=methods,
    ):
        tried.append(one)
        if one.error is not None:
            print(f"cxrnode predict: {one.error}", file=sys.stderr)
        elif args.format == "table":
            print(findings_table(one))
    if args.format == "json":
        print(json.dumps([one.to_json() for one in tried], indent=2))
    failed = sum(one.error is not None for one in tried)
    if failed:
        print(f"cxrnode predict: {failed} of {len(tried)} files failed", file=sys.stderr)
    return 2 if failed else 0


def _add_reprocess(commands) -> None:
    resend = commands.add_parser(
        "resend", help="re-deliver a finished or abandoned run's results (one or all destinations)"
    )
    resend.add_argument("study", help="Study Instance UID or accession number")
    resend.add_argument(
        "--destination", help="AE@host:port, AE title or URL of one destination (default: all)"
    )
    resend.set_defaults(run=_resend)
    rerun = commands.add_parser(
        "rerun", help="queue a new run of a study (e.g. after a model change)"
    )
    rerun.add_argument("study", help="Study Instance UID or accession number")
    rerun.set_defaults(run=_rerun)


def _resend(args, settings) -> int:
    from node.reprocess import ReprocessRefused, resend

    try:
        with open_database(settings).transaction() as session:
            done = resend(
                session, settings, args.study, args.destination, {"actor_user": cli_user()}
            )
    except ReprocessRefused as exc:
        print(f"cxrnode resend: {exc}", file=sys.stderr)
        return 2
    print(
        f"run {done.run}: {done.objects} objects queued again for {', '.join(done.destinations)}"
        " (a running node delivers them)"
    )
    return 0


def _rerun(args, settings) -> int:
    from node.reprocess import ReprocessRefused, rerun

    try:
        with open_database(settings).transaction() as session:
            done = rerun(session, args.study, {"actor_user": cli_user()})
    except ReprocessRefused as exc:
        print(f"cxrnode rerun: {exc}", file=sys.stderr)
        return 2
    replaces = f", replacing run {done.replaces_run}" if done.replaces_run else ""
    print(f"run {done.run} queued{replaces} (a running node's worker takes it)")
    return 0


def _add_similar(commands) -> None:
    similar = commands.add_parser(
        "similar", help="the stored studies whose images the model saw as nearest a study's"
    )
    similar.add_argument(
        "study",
        help="Study Instance UID or accession number, or an image file (DICOM, PNG, JPEG) "
        "that the settings' model reads first",
    )
    # Defaults and bounds are node.similar's, imported only when the command runs (numpy).
    similar.add_argument("-k", type=_k, help="how many studies (default 5)")
    similar.add_argument("--format", choices=["table", "json"], default="table")
    similar.set_defaults(run=_similar)


def _k(text: str) -> int:
    from node.similar import MAX_K

    if not text.isdigit() or not 1 <= int(text) <= MAX_K:
        raise argparse.ArgumentTypeError(f"k must be a whole number from 1 to {MAX_K}")
    return int(text)


def _similar(args, settings) -> int:
    from node.admin import render
    from node.similar import DEFAULT_K, SimilarRefused, record_query, similar_to_study
    from storage.queries import to_json

    k = args.k or DEFAULT_K
    db = open_database(settings)
    if Path(args.study).is_file():
        return _similar_to_file(Path(args.study), k, args.format, settings, db)
    answer = refused = None
    with db.reading() as session:
        try:
            answer = similar_to_study(session, args.study, k)
        except SimilarRefused as exc:
            refused = exc
    # Recorded before anything is shown: the answer names other patients' studies.
    with db.transaction() as session:
        actor = {"actor_user": cli_user()}
        record_query(session, args.study, k, answer, refused, via="cli", actor=actor)
    if answer is None:
        print(f"cxrnode similar: {refused}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(to_json(answer), indent=2))
    else:
        print(render.similar_text(answer))
    return 0


def _similar_to_file(path: Path, k: int, output: str, settings, db) -> int:
    """``cxrnode similar FILE``: the image through the model as ``cxrnode predict`` takes it
    (audited as ``model.predicted``), then its embedding searched (``admin.similar``)."""
    from node.admin import render
    from node.predict import try_files
    from node.similar import similar_to_image
    from node.startup import load_model
    from storage.queries import to_json

    predictor = load_model(settings)
    (tried,) = try_files(predictor, [path], None, settings, db, actor_user=cli_user(), methods=())
    if tried.error is not None:
        print(f"cxrnode similar: {tried.error}", file=sys.stderr)
        return 2
    prediction = tried.prediction
    answer = similar_to_image(
        db,
        prediction.embedding,
        prediction.model["id"],
        prediction.sha256,
        k,
        via="cli",
        actor={"actor_user": cli_user()},
    )
    if output == "json":
        print(json.dumps(to_json(answer), indent=2))
    else:
        print(render.similar_text(answer))
    return 0


def _add_import_model(commands) -> None:
    importer = commands.add_parser(
        "import-model",
        help="turn a downloaded community checkpoint into a model package",
        description="Nothing is downloaded: FILE is a checkpoint fetched elsewhere.",
    )
    sources = importer.add_subparsers(required=True, metavar="source", dest="source")
    xrv = sources.add_parser(
        "torchxrayvision", help="a torchxrayvision DenseNet-121 or ResNet-50 weights file"
    )
    xrv.add_argument("file", type=Path, help="the downloaded .pt file")
    xrv.add_argument(
        "--weights", required=True, help="the library's name for it, e.g. densenet121-res224-all"
    )
    xrv.add_argument("--out", type=Path, required=True, help="package directory to create")
    xrv.set_defaults(run=_import_model)
    chexnet = sources.add_parser(
        "chexnet", help="a CheXNet-style DenseNet-121 NIH-14 checkpoint (model.pth.tar)"
    )
    chexnet.add_argument("file", type=Path, help="the downloaded checkpoint")
    chexnet.add_argument("--out", type=Path, required=True, help="package directory to create")
    chexnet.set_defaults(run=_import_model)


def _import_model(args, settings) -> int:
    from models.importers import import_chexnet, import_torchxrayvision

    detail = {
        "source": args.source,
        "weights": getattr(args, "weights", None),
        "file": str(args.file),
        "file_sha256": _file_sha256(args.file),
        "package": str(args.out),
    }
    try:
        if args.source == "chexnet":
            config = import_chexnet(args.file, args.out)
        else:
            config = import_torchxrayvision(args.file, args.weights, args.out)
    except (ValueError, OSError) as exc:  # ModelPackageError is a ValueError
        _record_import(settings, False, {**detail, "reason": str(exc)})
        print(f"cxrnode import-model: {exc}", file=sys.stderr)
        return 2
    _record_import(settings, True, {**detail, "model": config.package_id})
    print(f"{config.package_id}: {len(config.labels)} labels, written to {args.out}")
    print(f'serve it with model = "{args.out}" (or CXRNODE_MODEL={args.out})')
    return 0


def _file_sha256(path: Path) -> str | None:
    from models.package import sha256_file

    return sha256_file(path) if path.is_file() else None


def _record_import(settings, succeeded: bool, detail: dict) -> None:
    """Which file became which package, or why it did not, by whom: ``model.imported``."""
    from storage import audit

    outcome = audit.Outcome.SUCCESS if succeeded else audit.Outcome.FAILURE
    with open_database(settings).transaction() as session:
        audit.record(session, Action.MODEL_IMPORTED, outcome, actor_user=cli_user(), detail=detail)


def _serve(args, settings) -> int:
    from node.service import Node  # torch is imported only by commands that need it

    Node(settings).run_until_signalled()
    return 0


def _config(args, settings) -> int:
    print(json.dumps(describe(settings), indent=2))
    return 0


def _demo(args, settings) -> int:
    from node.demo import run_demo

    return run_demo(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
