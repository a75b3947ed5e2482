"""Round overhead at scale: 1,000 nodes, each its own MQTT connection, in a 3-level hierarchy
(root -> 4 sites -> 5 buildings per site -> 50 nodes per building), through one Mosquitto on loopback.

Usage: .venv/bin/python bench/scale.py [--nodes 1000] [--params 10000 100000] [--rounds 4]
       [--compression raw int8]

The nodes are simulated: each its own paho client and MQTT session, using fedmq's envelope, codec and
control code, 250 per worker process driven by one thread (one Python thread per node would measure the
GIL, not fedmq); their training is a single vector step. The coordinator is a real ``fedmq coordinator
run`` process. Everything shares this machine's cores, so the simulated nodes' own work (receiving,
decoding, encoding and sending 1,000 models and updates) is inside the measured overhead; the CPU
seconds per round of each role are printed too. A round's wall time
is the time between two consecutive applied rounds as seen on the metrics topic (model download, start,
training, upload, aggregation at three levels); the overhead is that minus the slowest node's training
time in the round, which the nodes log. Round 1 (warm-up) is left out. Needs mosquitto (./install.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np

FED = "scale"
SITES, BUILDINGS, PER_WORKER = 4, 5, 250


def node_ids(n: int) -> List[str]:
    """Node ids spread evenly over the buildings: s<site>-b<building>-n<k>."""
    per = n // (SITES * BUILDINGS)
    return [f"s{s}-b{b}-n{k:03d}" for s in range(SITES) for b in range(BUILDINGS) for k in range(per)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


class SimNode:
    """One simulated node: its own paho client (MQTT v5, persistent session, will and birth), fedmq's envelope,
    codec and control code. Its "training" moves every weight by a fixed random step (SGD itself is not what
    this measures, and 250 nodes share a core here). Many of them share one thread (``worker``)."""

    def __init__(self, node: str, group: Tuple[str, ...], port: int, rng: np.random.Generator) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from fedmq.shared.messages import Status
        from fedmq.shared.topics import Topics

        self.node, self.group = node, group
        self.topics = Topics(FED)
        self.rng = rng
        self.model = None  # (version, weights)
        self.pending = None
        self.encoder = None
        self.step: Dict[str, np.ndarray] = {}
        self.train_s: Dict[int, float] = {}
        status = self.topics.status(group, node)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fedmq-{FED}-{node}", protocol=mqtt.MQTTv5)
        c.will_set(status, Status(node, "offline").encode(), qos=1, retain=True)
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, keepalive=120, clean_start=False, properties=props)
        for t in (self.topics.model(), self.topics.model() + "/_chunk/+", self.topics.control(group)):
            c.subscribe(t, qos=1)
        c.publish(status, Status(node, "online", samples=20, trainer="numpy").encode(), qos=1, retain=True)
        self.client = c

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        from fedmq.shared import codecs
        from fedmq.shared.envelope import Envelope, Kind, decode, encode
        from fedmq.shared.messages import Control
        from fedmq.shared.models import expected_shapes, spec_from_meta

        if msg.topic == self.topics.model():
            env = decode(msg.payload)
            spec = spec_from_meta(env.meta["model"])
            tensors = codecs.decode(env.codec, env.codec_params, env.tensors, expected_shapes(spec))
            self.model = (env.model_version, codecs.to_dense(tensors))
            if self.encoder is None:
                self.encoder = codecs.UpdateEncoder(codecs.Codec.from_meta(env.meta["update_codec"]))
                self.step = {k: self.rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in self.model[1].items()}
        elif msg.topic == self.topics.control(self.group):
            ctl = Control.decode(msg.payload)
            if ctl.type == "start" and self.node in ctl.selected:
                self.pending = ctl
        ctl = self.pending
        if ctl is None or self.model is None or self.model[0] != ctl.model_version:
            return
        self.pending = None
        t0 = time.perf_counter()
        weights = {k: v + self.step[k] for k, v in self.model[1].items()}  # "training": every weight moves
        self.train_s[ctl.round] = time.perf_counter() - t0
        codec = self.encoder.codec
        env = Envelope(kind=Kind.UPDATE, federation=FED, round=ctl.round, attempt=ctl.attempt, sender=self.node,
                       model_version=ctl.model_version, tensors=self.encoder.encode(weights, self.model[1]),
                       samples=20, codec=codec.name, codec_params=codec.params())
        self.client.publish(self.topics.update(self.group, self.node), encode(env), qos=1)


def worker(port: int, params: int, ids: List[str], out: str, stop_file: str) -> None:
    """Drive the SimNodes for ``ids`` from one thread (a selector over their sockets) until ``stop_file``
    appears; write each round's slowest training time."""
    import selectors

    rng = np.random.default_rng(abs(hash(ids[0])) % 2**32)
    nodes = []
    for node in ids:
        site, bld, _ = node.split("-")
        nodes.append(SimNode(node, (f"site{site[1:]}", f"bld{bld[1:]}"), port, rng))
    sel = selectors.DefaultSelector()
    for n in nodes:
        sel.register(n.client.socket(), selectors.EVENT_READ, n)
    last_misc = 0.0
    while not os.path.exists(stop_file):
        for n in nodes:
            if n.client.want_write():
                n.client.loop_write()
        for key, _ in sel.select(timeout=0.05):
            key.data.client.loop_read()
        if time.monotonic() - last_misc > 1.0:
            last_misc = time.monotonic()
            for n in nodes:
                n.client.loop_misc()
    slowest: Dict[int, float] = {}
    for n in nodes:
        for r, s in n.train_s.items():
            slowest[r] = max(slowest.get(r, 0.0), s)
        n.client.disconnect()
    with open(out, "w") as fh:
        json.dump(slowest, fh)


def run_case(n: int, params: int, rounds: int, compression: str) -> List[Dict[str, float]]:
    """One federation of n nodes; returns per-round wall time, slowest training and overhead."""
    from fedmq.broker.process import MosquittoProcess
    from fedmq.shared.messages import decode_metrics
    from fedmq.shared.mqtt import MqttLink
    from fedmq.shared.topicmap import BrokerSettings
    from fedmq.shared.topics import Topics

    work = tempfile.mkdtemp(prefix="fedmq-scale-")
    broker = MosquittoProcess(os.path.join(work, "broker"), persistence=False,
                              max_packet_bytes=64 * 1024 * 1024).start()
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
    cpu: Dict[int, Dict[str, float]] = {}
    outs = []
    try:
        for w in range(0, len(ids), PER_WORKER):
            out = os.path.join(work, f"worker{w}.json")
            outs.append(out)
            procs.append(
                subprocess.Popen(
                    me + ["--role", "worker", str(broker.port), str(params), out, stop_file, *ids[w : w + PER_WORKER]]
                )
            )
        coord = subprocess.Popen(
            [sys.executable, "-m", "fedmq.shared.cli", "coordinator", "run", tm, "--fresh", "--quiet"],
            stdout=open(os.path.join(work, "coordinator.log"), "wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(coord)
        print(f"  {n} nodes in {len(procs) - 1} worker processes, coordinator log {work}/coordinator.log", flush=True)
        end = time.monotonic() + 900
        while len(applied) < rounds and time.monotonic() < end and coord.poll() is None:
            msg = watcher.get(timeout=1.0)
            if msg is None or msg.retain:
                continue
            summary = decode_metrics(msg.payload)
            applied[summary["round"]] = time.monotonic()
            if summary["round"] in (1, rounds):
                assert broker.proc is not None
                roles = {
                    "coordinator": [coord.pid],
                    "mosquitto": [broker.proc.pid],
                    "simulated nodes": [p.pid for p in procs[:-1]],
                }
                cpu[summary["round"]] = {k: sum(cpu_seconds(p) for p in pids) for k, pids in roles.items()}
            print(
                f"  round {summary['round']}: {summary['updates']} updates, {summary['seconds']:.2f} s start to "
                f"applied",
                flush=True,
            )
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
    per_round = {k: (cpu[rounds][k] - cpu[1][k]) / (rounds - 1) for k in cpu[1]}
    print("  CPU seconds per round: " + ", ".join(f"{k} {v:.2f}" for k, v in per_round.items()), flush=True)
    return rows


FILES_BESIDE_NODES = 512  # Mosquitto's own files and the coordinator's sockets, beside a socket per node


def raise_file_limit(nodes: int) -> None:
    """Raise the open-file limit to what Mosquitto needs (a socket per node, inherited by the processes started
    here), within the hard limit; exit 2 saying how many nodes fit when the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = nodes + FILES_BESIDE_NODES
    if hard != resource.RLIM_INFINITY and need > hard:
        fit = (hard - FILES_BESIDE_NODES) // 20 * 20
        sys.exit(f"bench/scale.py: {nodes} nodes need {need} open files in Mosquitto, over this machine's hard "
                 f"limit of {hard}: run at most --nodes {fit}, or raise the hard limit (ulimit -Hn as root, "
                 "LimitNOFILE= in a systemd unit)")
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=1000, help="number of nodes (a multiple of 20; default 1000)")
    ap.add_argument("--params", type=int, nargs="+", default=[10_000, 100_000], help="model sizes")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per case (the first is warm-up; default 4)")
    ap.add_argument(
        "--compression",
        nargs="+",
        default=["raw", "int8"],
        choices=("raw", "float16", "int8", "topk"),
        help="update codecs to measure (non-raw ones also send the model as float16)",
    )
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        _, port, params, out, stop_file, *ids = args.role
        worker(int(port), int(params), ids, out, stop_file)
        return
    raise_file_limit(args.nodes)
    summary = []
    for params in args.params:
        for codec in args.compression:
            print(f"{params:,} parameters, {codec} updates:", flush=True)
            rows = run_case(args.nodes, params, args.rounds, codec)
            for r in rows:
                print(
                    f"  round {r['round']}: wall {r['wall_s']:.2f} s, slowest training {r['slowest_train_s']:.3f} s, "
                    f"overhead {r['overhead_s']:.2f} s",
                    flush=True,
                )
            med = float(np.median([r["overhead_s"] for r in rows]))
            summary.append((params, codec, med, float(np.median([r["wall_s"] for r in rows]))))
    print(f"\n{'params':>10} {'codec':>6} {'median wall s':>14} {'median overhead s':>18}")
    for params, codec, med, wall in summary:
        print(f"{params:>10,} {codec:>6} {wall:>14.2f} {med:>18.2f}")


if __name__ == "__main__":
    main()
