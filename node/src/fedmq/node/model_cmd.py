"""``fedmq model check FILE.tflite``: can this file be trained on a node?"""

from __future__ import annotations

import argparse
import os
import sys

from fedmq.node.model_check import check_model
from fedmq.node.trainers import TrainerUnavailable


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq model check``."""
    p = sub.add_parser("model", help="check a training-capable .tflite file",
                       description="Tools for the model files nodes train.")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    check = msub.add_parser("check", help="check signatures, shapes, dtypes and that a train step learns",
                            description="Check that FILE.tflite exposes train(x, y) -> loss, infer(x) -> output, "
                                        "get_weights() and set_weights(...) with matching names, shapes and "
                                        "dtypes, has a dynamic batch size, and that training on random data "
                                        "changes the weights and lowers the loss. Exit code 0 when all pass.")
    check.add_argument("file", help="the .tflite file")
    check.add_argument("--steps", type=int, default=30, help="train steps on the random batch (default 30)")
    check.set_defaults(func=_check)
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
