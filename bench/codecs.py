"""Bytes and accuracy per update codec: the digits demo (10 nodes, 20 rounds) and the FedProx paper's
Synthetic(1,1) (30 devices, 20 rounds), each run as a whole federation (``fedmq demo``: Mosquitto, a
coordinator and node processes) once per codec, same seed and rounds.

Usage: .venv/bin/python bench/codecs.py [--datasets digits synthetic] [--rounds 20]

Prints, per data set and codec: bytes per update on the wire (the whole message: envelope header and
tensors), the tensor bytes alone, both as ratios against float32, and the final accuracy and its
difference to float32 in points.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

CODECS = [("raw", []), ("float16", ["--compression", "float16"]), ("int8", ["--compression", "int8"]),
          ("topk 1.67%", ["--compression", "topk", "--topk-fraction", "0.0167"]),
          ("topk 1%", ["--compression", "topk", "--topk-fraction", "0.01"])]
NODES = {"digits": 10, "synthetic": 30}


def run(dataset: str, extra: List[str], rounds: int) -> Dict[str, float]:
    """One demo run; returns its report's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "fedmq.shared.cli", "demo", "--dataset", dataset, "--nodes", str(NODES[dataset]),
               "--rounds", str(rounds), "--report", report, "--plot", os.path.join(tmp, "p.png"), "--deadline", "60",
               *extra]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        rep = json.load(open(report))
    rows = rep["rounds"]
    return {"accuracy": rep["final_accuracy"], "seconds": rep["seconds"],
            "bytes": sum(r["bytes_per_update"] for r in rows) / len(rows),
            "tensor_bytes": sum(r["tensor_bytes_per_update"] for r in rows) / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "synthetic"], choices=sorted(NODES))
    ap.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    args = ap.parse_args()
    for dataset in args.datasets:
        print(f"\n{dataset} ({NODES[dataset]} nodes, {args.rounds} rounds)", flush=True)
        print(f"{'codec':>9} {'bytes/update':>13} {'x smaller':>9} {'tensor bytes':>13} {'x smaller':>9} "
              f"{'accuracy':>9} {'vs float32':>10} {'wall s':>7}", flush=True)
        base = None
        for name, extra in CODECS:
            r = run(dataset, extra, args.rounds)
            base = base or r
            print(f"{name:>9} {r['bytes']:>13,.0f} {base['bytes'] / r['bytes']:>9.2f} {r['tensor_bytes']:>13,.0f} "
                  f"{base['tensor_bytes'] / r['tensor_bytes']:>9.2f} {r['accuracy']:>9.4f} "
                  f"{100 * (r['accuracy'] - base['accuracy']):>+9.2f}p {r['seconds']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
