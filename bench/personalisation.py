"""Which model should a gateway serve? Candidates for ``serve.personalise``, measured per gateway.

For each scenario and seed this runs ``fedmq demo --scenario S --seed N`` (a real federation over a private
Mosquitto), then replays the same simulated history and the days that follow, and for each variant of
``serve.personalise`` trains what a gateway would serve from the final federated model and its own
samples. It prints, per variant: on how many gateways the served model is at least as good as the better of
the federated and the local-only model on the held-out days, and the overall score against central
training (accuracy, or RMSE for the forecast).

    .venv/bin/python bench/personalisation.py --seeds 0 1 2 --scenarios smart-home appliances
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from typing import Dict, List

from fedmq.coordinator.demo.appliances import APPLIANCES
from fedmq.coordinator.demo.run import DEFAULTS, SCENARIO_DEFAULTS
from fedmq.coordinator.demo.smart_home import SMART_HOME
from fedmq.coordinator.demo.streams import StreamScenario, compare_task
from fedmq.node.serve.config import Personalise

SCENARIOS: Dict[str, StreamScenario] = {"smart-home": SMART_HOME, "appliances": APPLIANCES}
NEWEST = Personalise(epochs=2, recent_samples=2000, holdout=0.2, local_epochs=0, refit=False, spread="newest")
VARIANTS: Dict[str, Personalise] = {
    "fine-tune 2 epochs on the newest 2,000, the newest 20 % held out": NEWEST,
    "the same, with a local-only candidate": replace(NEWEST, local_epochs=40),
    "5 epochs on all samples, local candidate, refit": replace(NEWEST, recent_samples=20000, epochs=5,
                                                               local_epochs=40, refit=True),
    "the same, 20 % held out in 4 of 20 blocks (the default)": Personalise(),
    "the same, 30 % in blocks": replace(Personalise(), holdout=0.3),
}


def run_demo(name: str, seed: int, workdir: str, rounds: int) -> argparse.Namespace:
    """Run the demo scenario; the arguments it ran with."""
    args = argparse.Namespace(**{**DEFAULTS, **SCENARIO_DEFAULTS.get(name, {})}, seed=seed, rounds=rounds)
    cmd = [sys.executable, "-m", "fedmq.shared.cli", "demo", "--scenario", name, "--seed", str(seed),
           "--rounds", str(rounds), "--workdir", workdir]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return args


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    tally: Dict[str, Dict[str, List[float]]] = {}
    for name in args.scenarios:
        scenario = SCENARIOS[name]
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix="fedmq-bench-personalise-") as work:
                run_args = run_demo(name, seed, work, args.rounds)
                sim = scenario.simulation(run_args)
                history = list(sim.run(run_args.days * 86400))
                future = list(sim.run(scenario.held_out_days * 86400))
                units = [u.name for u in sim.homes]
                for task in scenario.tasks:
                    for variant, setting in VARIANTS.items():
                        comp = compare_task(scenario, task, work, units, history, future, seed, setting)
                        key = f"{name} {task}"
                        row = tally.setdefault(key, {}).setdefault(variant, [0.0] * 7)
                        row[0] += comp["served_at_least_as_good_as_both"] * len(units)
                        row[1] += len(units)
                        row[2] += comp["overall"]["personalised"]
                        row[3] += comp["overall"]["central"]
                        row[4] += 1
                        row[5] += comp["overall"]["federated"]
                        row[6] += comp["overall"]["local"]
                        print(f"{key} seed {seed} {variant}: served >= max(federated, local) on "
                              f"{comp['served_at_least_as_good_as_both']:.0%}, served {comp['overall']['personalised']}"
                              f", federated {comp['overall']['federated']}, local {comp['overall']['local']}, "
                              f"central {comp['overall']['central']}", flush=True)
    print("\n| scenario task | serve.personalise | gateways: served >= max(federated, local) | served / federated / "
          "local / central |")
    print("|---|---|---|---|")
    for key, variants in tally.items():
        for variant, (ok, n, served, central, runs, federated, local) in variants.items():
            share = f"{round(ok)}/{round(n)} ({ok / n:.0%})"
            means = " / ".join(f"{v / runs:.3f}" for v in (served, federated, local, central))
            print(f"| {key} | {variant} | {share} | {means} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
