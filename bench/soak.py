"""Soak: many rounds with many nodes; the coordinator's memory must stay flat.

Simulated nodes share a few processes (`fedmq node run a.yaml b.yaml ...`), each node with its own MQTT
connection to a private Mosquitto. The coordinator runs as its own process; its RSS (VmRSS) is sampled
after every round from /proc. Prints RSS after warm-up, at the end, the growth, and a PNG of RSS per round.

Usage: .venv/bin/python bench/soak.py [--nodes 50] [--rounds 200] [--processes 5] [--warmup 20] [--plot soak.png]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import List

from fedmq.broker.process import MosquittoProcess
from fedmq.coordinator.demo.dataset import digits
from fedmq.coordinator.demo.federation import write_federation
from fedmq.shared.messages import MessageError, decode_metrics
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import BrokerSettings
from fedmq.shared.topics import Topics


def rss_mb(pid: int) -> float:
    """Current resident set size of a process."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def soak(nodes: int, rounds: int, processes: int, workdir: str) -> List[tuple]:
    """(round, coordinator RSS MB, round seconds) for every round."""
    train, test = digits(0)
    samples = []
    with MosquittoProcess(os.path.join(workdir, "broker")) as broker:
        layout = write_federation(workdir, train, test, nodes=nodes, groups=5, rounds=rounds, alpha=5.0, seed=0,
                                  model="softmax_regression", port=broker.port, deadline_s=30)
        watcher = MqttLink(f"soak-watch-{os.getpid()}", BrokerSettings(port=broker.port), persistent=False)
        watcher.subscribe(Topics("demo").metrics())
        watcher.start()
        cli = [sys.executable, "-m", "fedmq.shared.cli"]
        log = open(os.path.join(workdir, "coordinator.log"), "wb")
        coord = subprocess.Popen(cli + ["coordinator", "run", layout.topic_map, "--fresh", "--quiet"],
                                 stdout=log, stderr=subprocess.STDOUT)
        chunks = [layout.node_configs[i::processes] for i in range(processes)]
        pool = [subprocess.Popen(cli + ["node", "run", *chunk, "--exit-when-done"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for chunk in chunks]
        try:
            t0 = time.monotonic()
            while len(samples) < rounds and coord.poll() is None and time.monotonic() - t0 < 30 * 60:
                msg = watcher.get(0.5)
                if msg is None or msg.retain:
                    continue
                try:
                    summary = decode_metrics(msg.payload)
                except MessageError:
                    continue
                samples.append((summary["round"], rss_mb(coord.pid), summary["seconds"], summary["updates"]))
                if summary["round"] % 20 == 0:
                    print(f"  round {summary['round']:>4}: coordinator RSS {samples[-1][1]:.1f} MB, "
                          f"{summary['updates']} updates, {summary['seconds']:.2f} s", flush=True)
        finally:
            watcher.stop()
            for p in pool + [coord]:
                p.terminate()
            for p in pool + [coord]:
                p.wait(10)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--processes", type=int, default=5, help="node processes sharing the simulated nodes")
    ap.add_argument("--warmup", type=int, default=20, help="rounds before the baseline RSS is taken")
    ap.add_argument("--plot", help="write a PNG of RSS per round here")
    args = ap.parse_args()
    print(f"# soak: {args.nodes} nodes in {args.processes} processes, {args.rounds} rounds; "
          f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        samples = soak(args.nodes, args.rounds, args.processes, tmp)
    base = next(rss for rnd, rss, _, _ in samples if rnd >= args.warmup)
    end = samples[-1][1]
    print(f"rounds completed: {len(samples)} of {args.rounds}; all with {args.nodes} updates: "
          f"{all(u == args.nodes for *_, u in samples)}")
    print(
        f"coordinator RSS after warm-up (round {args.warmup}): {base:.1f} MB; at round {samples[-1][0]}: {end:.1f} MB; "
        f"growth {100 * (end - base) / base:+.1f} % (target < 10 %)"
    )
    print(f"round time: median {sorted(s for _, _, s, _ in samples)[len(samples) // 2]:.3f} s")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
        ax.plot([r for r, *_ in samples], [m for _, m, *_ in samples])
        ax.set_xlabel("round")
        ax.set_ylabel("coordinator RSS (MB)")
        ax.set_ylim(0, max(m for _, m, *_ in samples) * 1.2)
        ax.set_title(f"soak: {args.nodes} nodes, {len(samples)} rounds")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
