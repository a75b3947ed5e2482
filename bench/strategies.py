"""Learning quality of the aggregation strategies, each run as whole federations (``fedmq demo``: Mosquitto,
a coordinator and one process per node) on this machine.

Usage: .venv/bin/python bench/strategies.py [--only stragglers noniid attacks async secure dp] [--rounds 20]
       [--seeds 0 1] [--plots docs]

* stragglers: the FedProx paper's Synthetic(1,1), 30 devices, 10 per round, 20 epochs at lr 0.01; each
  selected device is a straggler with probability 0, 0.5 or 0.9. FedAvg drops stragglers (they miss the
  deadline); FedProx (mu = 1) takes their partial work (1 to 19 epochs, uniform), as in the paper.
* noniid: digits over 10 nodes, Dirichlet alpha 0.1, 0.5 and 10: accuracy per round for FedAvg, FedProx
  (mu = 0.1) and FedAdam (server lr 0.03).
* attacks: digits over 10 nodes, Dirichlet alpha 0.1 and 0.5 (--alphas), 2 nodes sending start - 10 x their
  change (with and without claiming 10,000 samples) or no change: final accuracy of unbounded FedAvg, the
  default bounds, the robust rules and FLTrust, on the half of the held-out set the coordinator never had
  (the other half is its evaluation set, which FLTrust trusts).
* async: digits, 10 nodes of which 3 take 2 s longer to train; sync rounds against FedBuff (a version per
  5 changes, server lr 0.5) by wall-clock time: time to reach 0.9 accuracy and accuracy after the same time.
* secure: digits with and without secure aggregation, same seed: accuracy, bytes per update, round time.
* dp: digits over 30 nodes, central DP with the noise multiplier that spends epsilon 1, 3 and 8 (delta 1e-5)
  over the run; accuracy against no DP.
Prints every figure; with --plots writes PNGs (accuracy per round / over time) there.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Dict, List, Optional, Tuple

from demo_runs import run_demo

SYNTHETIC = ["--dataset", "synthetic", "--nodes", "30", "--groups", "3", "--fraction", "0.34", "--quorum", "0.1"]
DIGITS = ["--dataset", "digits", "--nodes", "10", "--groups", "2"]


def curve(report: dict, key: str = "accuracy") -> List[float]:
    """A report's figure per round."""
    return [r[key] for r in report["rounds"]]


def stragglers(rounds: int, seeds: List[int]) -> Dict[str, List[float]]:
    print(
        "\n== Synthetic(1,1), 30 devices, 10 per round: stragglers, FedAvg (drops them) vs FedProx mu=1 (partial work)"
    )
    print(f"{'stragglers':>10} {'FedAvg final':>13} {'FedProx final':>14}", flush=True)
    curves: Dict[str, List[float]] = {}
    for p in (0.0, 0.5, 0.9):
        finals: Dict[str, List[float]] = {"fedavg": [], "fedprox": []}
        for seed in seeds:
            for name, strategy in (("fedavg", "{}"), ("fedprox", "{proximal_mu: 1.0, partial_work: true}")):
                rep = run_demo(
                    [
                        *SYNTHETIC,
                        "--rounds",
                        str(rounds),
                        "--seed",
                        str(seed),
                        "--deadline",
                        "3",
                        "--stragglers",
                        str(p),
                        "--strategy",
                        strategy,
                    ]
                )
                finals[name].append(rep["final_accuracy"])
                if seed == seeds[0]:
                    curves[f"{name} {int(p * 100)}% stragglers"] = curve(rep)
        print(
            f"{int(p * 100):>9}% {statistics.mean(finals['fedavg']):>13.4f} {statistics.mean(finals['fedprox']):>14.4f}"
            f"   per seed {_fmt(finals['fedavg'])} / {_fmt(finals['fedprox'])}",
            flush=True,
        )
    return curves


def noniid(rounds: int, seeds: List[int]) -> Dict[str, List[float]]:
    print("\n== digits, 10 nodes, Dirichlet non-IID: final accuracy (mean over seeds)")
    strategies = {
        "FedAvg": "{}",
        "FedProx mu=0.1": "{proximal_mu: 0.1}",
        "FedAdam lr=0.03": "{server_optimizer: fedadam, server_lr: 0.03}",
    }
    print(f"{'alpha':>6} " + " ".join(f"{n:>16}" for n in strategies), flush=True)
    curves: Dict[str, List[float]] = {}
    for alpha in (0.1, 0.5, 10.0):
        row = []
        for name, strategy in strategies.items():
            finals = []
            for seed in seeds:
                rep = run_demo(
                    [
                        *DIGITS,
                        "--alpha",
                        str(alpha),
                        "--rounds",
                        str(rounds),
                        "--seed",
                        str(seed),
                        "--strategy",
                        strategy,
                    ]
                )
                finals.append(rep["final_accuracy"])
                if seed == seeds[0]:
                    curves[f"{name}, alpha {alpha:g}"] = curve(rep)
            row.append(statistics.mean(finals))
        print(f"{alpha:>6g} " + " ".join(f"{a:>16.4f}" for a in row), flush=True)
    return curves


def first_at(report: dict, target: float) -> Optional[float]:
    """Seconds (since the coordinator started) until the global model first reached ``target``."""
    return next((r["elapsed"] for r in report["rounds"] if r["accuracy"] >= target), None)


def async_vs_sync(rounds: int, seed: int) -> Dict[str, List[Tuple[float, float]]]:
    print("\n== digits, 10 nodes, 3 of them 2 s slower: sync rounds vs async FedBuff (a version per 5 changes)")
    runs = {
        "sync": run_demo([*DIGITS, "--rounds", str(rounds), "--seed", str(seed), "--slow", "3:2.0"]),
        "async": run_demo(
            [
                *DIGITS,
                "--rounds",
                str(2 * rounds),
                "--seed",
                str(seed),
                "--slow",
                "3:2.0",
                "--strategy",
                "{mode: async, server_lr: 0.5, clip_norm: none, "
                "async: {buffer_size: 5, max_staleness: 10, flush_s: 0.2}}",
            ]
        ),
    }
    print(f"{'mode':>6} {'versions':>9} {'wall s':>7} {'s to 0.90':>10} {'final acc':>10} {'mean staleness':>15}")
    for name, rep in runs.items():
        rows = rep["rounds"]
        stale = [r.get("staleness", 0.0) for r in rows]
        reach = first_at(rep, 0.9)
        print(
            f"{name:>6} {len(rows):>9} {rows[-1]['elapsed']:>7.1f} "
            f"{reach if reach is not None else float('nan'):>10.1f} "
            f"{rep['final_accuracy']:>10.4f} {statistics.mean(stale):>15.2f}",
            flush=True,
        )
    horizon = min(r["rounds"][-1]["elapsed"] for r in runs.values())
    for name, rep in runs.items():
        acc = max((r["accuracy"] for r in rep["rounds"] if r["elapsed"] <= horizon), default=float("nan"))
        print(f"  best accuracy of {name} within {horizon:.1f} s: {acc:.4f}")
    return {name: [(r["elapsed"], r["accuracy"]) for r in rep["rounds"]] for name, rep in runs.items()}


def secure(rounds: int, seeds: List[int]) -> None:
    print("\n== digits, 10 nodes in 2 homes: secure aggregation against plain FedAvg (same seeds)")
    print(f"{'':>7} {'accuracy':>9} {'bytes/update':>13} {'median round s':>15}")
    for name, extra in (
        ("plain", ["--strategy", "{clip_norm: none}"]),
        ("secure", ["--strategy", "{secure: {phase_s: 5}, clip_norm: none}"]),
    ):
        reps = [run_demo([*DIGITS, "--rounds", str(rounds), "--seed", str(s), *extra]) for s in seeds]
        rows = [r for rep in reps for r in rep["rounds"]]
        print(
            f"{name:>7} {statistics.mean(rep['final_accuracy'] for rep in reps):>9.4f} "
            f"{statistics.mean(r['bytes_per_update'] for r in rows):>13,.0f} "
            f"{statistics.median(r['seconds'] for r in rows):>15.3f}",
            flush=True,
        )


ATTACKS = {
    "clean": [],
    "sign flip x10, 10,000 samples claimed": ["--attack", "2:-10:10000"],
    "sign flip x10": ["--attack", "2:-10"],
    "no change sent (their data lost)": ["--attack", "2:0"],
}
DEFENCES = {
    "unbounded FedAvg": "{clip_norm: none, weight_cap: none}",
    "default (bounded FedAvg)": "{}",
    "trimmed mean": "{aggregator: trimmed_mean}",
    "trimmed mean, buckets of 3": "{aggregator: trimmed_mean, bucket_size: 3}",
    "median": "{aggregator: median}",
    "multi-Krum f=2": "{aggregator: multi_krum, byzantine: 2}",
    "FLTrust (trusted eval set)": "{aggregator: fltrust}",
}


def attacks(rounds: int, seeds: List[int], alpha: float) -> None:
    print(f"\n== digits, 10 nodes split non-IID (Dirichlet alpha {alpha:g}), 2 of them attacking: final accuracy")
    print(f"{'':>28} " + " ".join(f"{a[:18]:>18}" for a in ATTACKS), flush=True)
    for name, strategy in DEFENCES.items():
        row = []
        for extra in ATTACKS.values():
            reps = [
                run_demo(
                    [
                        *DIGITS,
                        "--alpha",
                        str(alpha),
                        "--rounds",
                        str(rounds),
                        "--seed",
                        str(s),
                        "--strategy",
                        strategy,
                        "--trusted-split",  # every defence scored on the half of the held-out set the
                        "0.5",  # coordinator never had (FLTrust trusts the other half)
                        *extra,
                    ]
                )
                for s in seeds
            ]
            row.append(statistics.mean(r["final_accuracy"] or 0.0 for r in reps))
        print(f"{name:>28} " + " ".join(f"{a:>18.4f}" for a in row), flush=True)


def noise_for(epsilon: float, rounds: int, delta: float = 1e-5) -> float:
    """The smallest noise multiplier (to 1 %) that spends at most ``epsilon`` over ``rounds`` full rounds."""
    import dp_accounting
    from dp_accounting import rdp

    def spent(z: float) -> float:
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(z), rounds)
        return acc.get_epsilon(delta)

    lo, hi = 0.1, 200.0
    while hi / lo > 1.01:
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if spent(mid) > epsilon else (lo, mid)
    return hi


def dp(rounds: int, seeds: List[int]) -> None:
    print("\n== digits, 30 nodes, central DP (clip 1.0, every node every round): accuracy at epsilon 1, 3, 8")
    base = ["--dataset", "digits", "--nodes", "30", "--groups", "3", "--rounds", str(rounds)]
    print(f"{'epsilon':>8} {'noise mult.':>12} {'reported eps':>13} {'accuracy':>9}")
    for eps in (None, 8.0, 3.0, 1.0):
        strategy = (
            "{}"
            if eps is None
            else "{privacy: {mode: central, clip_norm: 1.0, "
            f"noise_multiplier: {noise_for(eps, rounds):.3f}, delta: 1.0e-5}}}}"
        )
        reps = [run_demo([*base, "--seed", str(s), "--strategy", strategy]) for s in seeds]
        reported = reps[0]["rounds"][-1].get("epsilon", float("inf"))
        z = noise_for(eps, rounds) if eps is not None else 0.0
        print(
            f"{'none' if eps is None else eps:>8} {z:>12.3f} {reported:>13.3f} "
            f"{statistics.mean(r['final_accuracy'] for r in reps):>9.4f}",
            flush=True,
        )


def _fmt(values: List[float]) -> str:
    return " ".join(f"{v:.4f}" for v in values)


def _save(series: Dict[str, Tuple[List[float], List[float]]], path: str, xlabel: str, title: str) -> None:
    """One line per series (x values, held-out accuracy) in a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker=".", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (held out)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot written to {path}")


def plot(curves: Dict[str, List[float]], path: str, title: str) -> None:
    """Accuracy per round."""
    _save({k: (list(range(1, len(v) + 1)), v) for k, v in curves.items()}, path, "round", title)


def plot_time(series: Dict[str, List[Tuple[float, float]]], path: str) -> None:
    """Accuracy over wall-clock time."""
    _save(
        {k: ([t for t, _ in v], [a for _, a in v]) for k, v in series.items()},
        path,
        "seconds since the coordinator started",
        "digits, 3 of 10 nodes 2 s slower: sync rounds vs async FedBuff",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        nargs="+",
        default=["stragglers", "noniid", "attacks", "async", "secure", "dp"],
        choices=["stragglers", "noniid", "attacks", "async", "secure", "dp"],
    )
    ap.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds to average (default 0 1)")
    ap.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=[0.1, 0.5],
        help="attacks: Dirichlet concentrations of the splits (default 0.1 0.5)",
    )
    ap.add_argument("--plots", help="directory for PNG plots")
    args = ap.parse_args()
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
    if "stragglers" in args.only:
        curves = stragglers(args.rounds, args.seeds)
        if args.plots:
            plot(curves, f"{args.plots}/strategies-stragglers.png", "Synthetic(1,1): FedAvg vs FedProx with stragglers")
    if "noniid" in args.only:
        curves = noniid(args.rounds, args.seeds)
        if args.plots:
            plot(curves, f"{args.plots}/strategies-noniid.png", "digits, Dirichlet non-IID: FedAvg, FedProx, FedAdam")
    if "attacks" in args.only:
        for alpha in args.alphas:
            attacks(args.rounds, args.seeds, alpha)
    if "async" in args.only:
        series = async_vs_sync(args.rounds, args.seeds[0])
        if args.plots:
            plot_time(series, f"{args.plots}/strategies-async.png")
    if "secure" in args.only:
        secure(args.rounds, args.seeds)
    if "dp" in args.only:
        dp(args.rounds, args.seeds)


if __name__ == "__main__":
    main()
