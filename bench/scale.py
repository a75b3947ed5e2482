"""Round overhead at scale: 1,000 nodes, each its own MQTT connection, in a 3-level hierarchy
(root -> 4 sites -> 5 buildings per site -> 50 nodes per building), through one Mosquitto on loopback.

Usage: .venv/bin/python bench/scale.py [--nodes 1000] [--params 10000 100000] [--rounds 4]
       [--compression raw int8]

The nodes are real ``NodeAgent`` objects (MQTT link, envelope and codec, numpy trainer on 20 samples),
250 per worker process; the coordinator is a real ``fedmq coordinator run`` process. A round's wall time
is the time between two consecutive applied rounds as seen on the metrics topic (model download, start,
training, upload, aggregation at three levels); the overhead is that minus the slowest node's training
time in the round, which the nodes log. Round 1 (warm-up) is left out. Needs mosquitto (./install.sh).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

import numpy as np

FED = "scale"
SITES, BUILDINGS, PER_WORKER = 4, 5, 250


def node_ids(n: int) -> List[str]:
    """Node ids spread evenly over the buildings: s<site>-b<building>-n<k>."""
    per = n // (SITES * BUILDINGS)
    return [f"s{s}-b{b}-n{k:03d}" for s in range(SITES) for b in range(BUILDINGS) for k in range(per)]


def write_topic_map(path: str, port: int, params: int, n: int, compression: str) -> None:
    """The 3-level federation."""
    import yaml

    tree = {"groups": {f"site{s}": {"groups": {f"bld{b}": {"admit": [f"s{s}-b{b}-*"]} for b in range(BUILDINGS)}}
                       for s in range(SITES)}}
    fed = {"federation": FED, "broker": {"host": "127.0.0.1", "port": port},
           "model": {"kind": "softmax_regression", "features": params // 10 - 1, "classes": list(range(10))},
           "rounds": {"rounds": 100, "min_nodes": n, "deadline_s": 120, "quorum": 1.0, "local_epochs": 1,
                      "batch_size": 20, "learning_rate": 0.01, "wait_for_nodes_s": 600, "hop_margin_s": 2},
           "limits": {"max_message_bytes": 64 * 1024 * 1024, "max_tracked_nodes": 10 * n},
           "tree": tree}
    if compression != "raw":
        fed["compression"] = {"update": compression, "model": "float16"}
    with open(path, "w") as fh:
        yaml.safe_dump(fed, fh, sort_keys=False)


class TrainTimes(logging.Handler):
    """Collects each node's training time per round from the agents' log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.by_round: Dict[int, float] = {}  # emit runs under the handler's own lock

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("round %d: trained"):
            rnd, _, seconds = record.args[0], record.args[1], record.args[2]  # type: ignore[index]
            self.by_round[rnd] = max(self.by_round.get(rnd, 0.0), float(seconds))


def worker(port: int, params: int, ids: List[str], out: str, stop_file: str) -> None:
    """Run NodeAgents for ``ids`` in threads until ``stop_file`` appears; write the slowest training per round."""
    from fedmq.node.agent import NodeAgent
    from fedmq.node.config import NodeConfig
    from fedmq.shared.topicmap import BrokerSettings, DataRef

    times = TrainTimes()
    logging.getLogger("fedmq").addHandler(times)
    logging.getLogger("fedmq").setLevel(logging.INFO)
    logging.getLogger("fedmq").propagate = False
    problems = logging.StreamHandler()
    problems.setLevel(logging.DEBUG if os.environ.get("FEDMQ_BENCH_DEBUG") else logging.WARNING)
    logging.getLogger("fedmq").addHandler(problems)
    rng = np.random.default_rng(abs(hash(ids[0])) % 2**32)
    features = params // 10 - 1
    agents = []
    for node in ids:
        site, bld, _ = node.split("-")
        cfg = NodeConfig(file="-", node_id=node, federation=FED, group=(f"site{site[1:]}", f"bld{bld[1:]}"),
                         broker=BrokerSettings(port=port, keepalive_s=120), data=DataRef("npz", "-"), trainer="numpy",
                         max_message_bytes=64 * 1024 * 1024, cache_dir=tempfile.gettempdir())
        x = rng.normal(0, 1, (20, features)).astype(np.float32)
        agents.append(NodeAgent(cfg, x, rng.integers(0, 10, 20)))
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for t in threads:
        t.start()
        time.sleep(0.002)  # do not stampede the broker with 250 CONNECTs at once
    while not os.path.exists(stop_file):
        time.sleep(0.2)
    for a in agents:
        a.stop()
    for t in threads:
        t.join(10)
    with open(out, "w") as fh:
        json.dump(times.by_round, fh)


def run_case(n: int, params: int, rounds: int, compression: str) -> List[Dict[str, float]]:
    """One federation of n nodes; returns per-round wall time, slowest training and overhead."""
    from fedmq.broker.process import MosquittoProcess
    from fedmq.shared.messages import decode_metrics
    from fedmq.shared.mqtt import MqttLink
    from fedmq.shared.topicmap import BrokerSettings
    from fedmq.shared.topics import Topics

    work = tempfile.mkdtemp(prefix="fedmq-scale-")
    broker = MosquittoProcess(os.path.join(work, "broker"), persistence=False, max_packet_bytes=64 * 1024 * 1024).start()
    tm = os.path.join(work, "fed.yaml")
    write_topic_map(tm, broker.port, params, n, compression)
    ids = node_ids(n)
    stop_file = os.path.join(work, "stop")
    me = [sys.executable, os.path.abspath(__file__)]
    procs: List[subprocess.Popen] = []
    watcher = MqttLink("scale-watch", BrokerSettings(port=broker.port), persistent=False)
    watcher.subscribe(Topics(FED).metrics())
    watcher.start()
    applied: Dict[int, float] = {}
    outs = []
    try:
        for w in range(0, len(ids), PER_WORKER):
            out = os.path.join(work, f"worker{w}.json")
            outs.append(out)
            procs.append(subprocess.Popen(me + ["--role", "worker", str(broker.port), str(params), out, stop_file,
                                                *ids[w:w + PER_WORKER]]))
        coord = subprocess.Popen([sys.executable, "-m", "fedmq.shared.cli", "coordinator", "run", tm, "--fresh",
                                  "--quiet"], stdout=open(os.path.join(work, "coordinator.log"), "wb"),
                                 stderr=subprocess.STDOUT)
        procs.append(coord)
        print(f"  {n} nodes in {len(procs) - 1} worker processes, coordinator log {work}/coordinator.log", flush=True)
        end = time.monotonic() + 900
        while len(applied) < rounds and time.monotonic() < end and coord.poll() is None:
            msg = watcher.get(timeout=1.0)
            if msg is None or msg.retain:
                continue
            summary = decode_metrics(msg.payload)
            applied[summary["round"]] = time.monotonic()
            print(f"  round {summary['round']}: {summary['updates']} updates, {summary['seconds']:.2f} s start to "
                  f"applied", flush=True)
        if len(applied) < rounds:
            raise RuntimeError(f"only {len(applied)} rounds were applied; see {work}")
    finally:
        open(stop_file, "w").close()
        for p in procs[:-1]:
            p.wait(60)
        coord.terminate()
        coord.wait(10)
        watcher.stop()
        broker.stop()
    slowest: Dict[int, float] = {}
    for out in outs:
        for r, s in json.load(open(out)).items():
            slowest[int(r)] = max(slowest.get(int(r), 0.0), s)
    rows = []
    for r in range(2, rounds + 1):
        wall = applied[r] - applied[r - 1]
        rows.append({"round": r, "wall_s": wall, "slowest_train_s": slowest[r], "overhead_s": wall - slowest[r]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000, help="number of nodes (a multiple of 20; default 1000)")
    ap.add_argument("--params", type=int, nargs="+", default=[10_000, 100_000], help="model sizes")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per case (the first is warm-up; default 4)")
    ap.add_argument("--compression", nargs="+", default=["raw", "int8"], choices=("raw", "float16", "int8", "topk"),
                    help="update codecs to measure (non-raw ones also send the model as float16)")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        _, port, params, out, stop_file, *ids = args.role
        worker(int(port), int(params), ids, out, stop_file)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 4 * args.nodes + 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))  # Mosquitto needs a socket per node
    summary = []
    for params in args.params:
        for codec in args.compression:
            print(f"{params:,} parameters, {codec} updates:", flush=True)
            rows = run_case(args.nodes, params, args.rounds, codec)
            for r in rows:
                print(f"  round {r['round']}: wall {r['wall_s']:.2f} s, slowest training {r['slowest_train_s']:.3f} s, "
                      f"overhead {r['overhead_s']:.2f} s", flush=True)
            med = float(np.median([r["overhead_s"] for r in rows]))
            summary.append((params, codec, med, float(np.median([r["wall_s"] for r in rows]))))
    print(f"\n{'params':>10} {'codec':>6} {'median wall s':>14} {'median overhead s':>18}")
    for params, codec, med, wall in summary:
        print(f"{params:>10,} {codec:>6} {wall:>14.2f} {med:>18.2f}")


if __name__ == "__main__":
    main()
