"""Bytes and accuracy per update codec: the digits demo (10 nodes, 20 rounds) and the FedProx paper's
Synthetic(1,1) (30 devices, 20 rounds), each run as a whole federation (``fedmq demo``: Mosquitto, a
coordinator and node processes) once per codec, same seed and rounds.

Usage: .venv/bin/python bench/codecs.py [--datasets digits synthetic] [--rounds 20] [--seeds 0 1 2]

Prints, per data set and codec: bytes per update on the wire (the whole message: envelope header and
tensors), the tensor bytes alone, both as ratios against float32, and the final accuracy and its
difference to float32 in points: per seed (split, model initialisation and data all follow the seed) and
the mean over the seeds, each codec compared with float32 on the same seed.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Dict, List

from demo_runs import run_demo

CODECS = [("raw", []), ("float16", ["--compression", "float16"]), ("int8", ["--compression", "int8"]),
          ("topk 10%", ["--compression", "topk", "--topk-fraction", "0.1"]),
          ("topk 5%", ["--compression", "topk", "--topk-fraction", "0.05"]),
          ("topk 6% gap8/int8", ["--compression", "topk", "--topk-fraction", "0.06", "--topk-index", "gap8",
                                 "--topk-values", "int8"])]
NODES = {"digits": 10, "synthetic": 30}


def run(dataset: str, extra: List[str], rounds: int, seed: int) -> Dict[str, float]:
    """One demo run; returns its report's figures."""
    rep = run_demo(["--dataset", dataset, "--nodes", str(NODES[dataset]), "--rounds", str(rounds), "--seed", str(seed),
                    "--deadline", "60", *extra])
    rows = rep["rounds"]
    return {"accuracy": rep["final_accuracy"], "seconds": rep["seconds"],
            "bytes": sum(r["bytes_per_update"] for r in rows) / len(rows),
            "tensor_bytes": sum(r["tensor_bytes_per_update"] for r in rows) / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "synthetic"], choices=sorted(NODES))
    ap.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run and average (default 0 1 2)")
    args = ap.parse_args()
    for dataset in args.datasets:
        print(f"\n{dataset} ({NODES[dataset]} nodes, {args.rounds} rounds, seeds {args.seeds})", flush=True)
        print(f"{'codec':>17} {'bytes/update':>13} {'x smaller':>9} {'tensor bytes':>13} {'x smaller':>9} "
              f"{'accuracy per seed':>26} {'mean':>7} {'vs float32':>10}", flush=True)
        base: List[Dict[str, float]] = []
        for name, extra in CODECS:
            runs = [run(dataset, extra, args.rounds, seed) for seed in args.seeds]
            base = base or runs
            mean = {k: statistics.mean(r[k] for r in runs) for k in ("bytes", "tensor_bytes", "accuracy")}
            ref = {k: statistics.mean(r[k] for r in base) for k in ("bytes", "tensor_bytes", "accuracy")}
            per_seed = " ".join(f"{r['accuracy']:.4f}" for r in runs)
            print(f"{name:>17} {mean['bytes']:>13,.0f} {ref['bytes'] / mean['bytes']:>9.2f} "
                  f"{mean['tensor_bytes']:>13,.0f} {ref['tensor_bytes'] / mean['tensor_bytes']:>9.2f} "
                  f"{per_seed:>26} {mean['accuracy']:>7.4f} {100 * (mean['accuracy'] - ref['accuracy']):>+9.2f}p",
                  flush=True)


if __name__ == "__main__":
    main()
