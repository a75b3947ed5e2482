"""``fedmq model``: check a training-capable .tflite file, export the federation's model, predict with it."""

from __future__ import annotations

import argparse
import os
import sys

from fedmq.node.model_check import check_model
from fedmq.node.model_export import exporters, run_export, run_predict
from fedmq.node.trainers import TrainerUnavailable


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq model check``, ``export`` and ``predict``."""
    p = sub.add_parser("model", help="check a .tflite file; export the federation's model; predict with it",
                       description="Tools for the federation's models: check a training-capable .tflite file, "
                                   "export the global model as a file of its own, predict with an export.")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    check = msub.add_parser("check", help="check signatures, shapes, dtypes and that a train step learns",
                            description="Check that FILE.tflite exposes train(x, y) -> loss, infer(x) -> output, "
                                        "get_weights() and set_weights(...) with matching names, shapes and "
                                        "dtypes, has a dynamic batch size, and that training on random data "
                                        "changes the weights and lowers the loss. Exit code 0 when all pass.")
    check.add_argument("file", help="the .tflite file")
    check.add_argument("--steps", type=int, default=30, help="train steps on the random batch (default 30)")
    check.set_defaults(func=_check)
    ex = msub.add_parser(
        "export",
        help="write the global model as a self-contained file",
        description="Write the global model (weights, layout, feature scaling and feature names) "
        "as one file usable away from fedmq: from a checkpoint directory, a .fmq model "
        "file (a node keeps <cache_dir>/global-model-<node id>.fmq), or the broker's retained "
        "model (--from-broker NODE.yaml, verified with that node's keys).",
        epilog="examples:\n  fedmq model export checkpoints/ -o occupancy.npz\n"
        "  fedmq model export --from-broker node.yaml -o occupancy.npz\n"
        "  fedmq model export checkpoints/ --format tflite -o occupancy.tflite",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("source", nargs="?", help="a checkpoint directory or a .fmq model file")
    ex.add_argument("--from-broker", metavar="NODE.yaml", help="fetch the retained global model with this node config")
    ex.add_argument("-o", "--output", required=True, help="the file to write")
    ex.add_argument(
        "--format",
        default="npz",
        help=f"npz (numpy arrays + JSON; default) or tflite (with FILE.json beside it; installed here: "
        f"{', '.join(exporters())})",
    )
    ex.add_argument("--feature-names", metavar="A,B,...", help="name the features (checkpoints do not know them)")
    ex.set_defaults(func=_export)
    pr = msub.add_parser(
        "predict",
        help="predict every row of a CSV file with an exported model",
        description="Predict every row of DATA.csv (a header row; the model's feature columns by "
        "name when the export names them, else every column but the label, in order). "
        "Writes CSV: prediction, confidence and class probabilities. With a label "
        "column, prints the accuracy or RMSE to stderr.",
    )
    pr.add_argument("model", help="an .npz or .tflite export, a .fmq model file or a checkpoint directory")
    pr.add_argument("data", help="the CSV file")
    pr.add_argument("-o", "--output", help="write the predictions here (default: standard output)")
    pr.add_argument("--label-column", default="label", help="the label column, if any (default label)")
    pr.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _check(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        print(f"fedmq model check: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        report = check_model(data, steps=args.steps)
    except TrainerUnavailable as exc:
        print(f"fedmq model check: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file} ({os.path.getsize(args.file):,} bytes)")
    for ok, text in report.results:
        print(f"  [{'ok' if ok else 'FAIL'}] {text}")
    if report.weights:
        print("  weights:")
        for name, (shape, dtype) in report.weights.items():
            print(f"    {name:<32} {str(list(shape)):<14} {dtype}")
    print("OK: this model can be trained by fedmq nodes" if report.ok else "FAILED: see the checks above")
    return 0 if report.ok else 1


def _export(args: argparse.Namespace) -> int:
    if bool(args.source) == bool(args.from_broker):
        print(
            "fedmq model export: name either a SOURCE (checkpoint directory or .fmq file) or --from-broker NODE.yaml",
            file=sys.stderr,
        )
        return 2
    return run_export(args)
