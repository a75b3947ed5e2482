"""Ingest: how fast the coordinator aggregates updates arriving through Mosquitto, next to a bare paho
subscriber receiving the same messages in the same run, and the coordinator's peak RSS against the
number of updates.

Usage: .venv/bin/python bench/ingest.py [--params 10000 100000 1000000] [--profile FILE.html]

For each model size a private Mosquitto starts; two consumer processes subscribe: the real coordinator
code path (CoordinatorService.dispatch -> GroupAggregator: envelope decode and checks, codec decode,
streaming sums) and a bare paho client that only counts messages. Then one publisher process sends N
pre-encoded updates (QoS 1, as nodes do) as fast as it can. Each consumer's rate is N / (time of its
last message - time the publisher started). Needs mosquitto (./install.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

FED = "ingest"
UPDATES = {10_000: 2000, 100_000: 400, 1_000_000: 60}
RSS_COUNTS = (100, 200, 400)  # at 100k parameters: peak RSS against the number of updates


def vm_hwm_mb() -> float:
    """This process's peak RSS in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def topic_map(path: str, port: int, params: int, n: int) -> str:
    """A one-group federation of n nodes (n00000...) training a softmax regression of about ``params``."""
    import yaml

    fed = {"federation": FED, "broker": {"host": "127.0.0.1", "port": port},
           "model": {"kind": "softmax_regression", "features": params // 10 - 1, "classes": list(range(10))},
           "rounds": {"rounds": 1, "deadline_s": 3600, "min_nodes": 1},
           "limits": {"max_message_bytes": 64 * 1024 * 1024, "max_messages_per_node_s": 1000},
           "tree": {"admit": ["n*"]}}
    with open(path, "w") as fh:
        yaml.safe_dump(fed, fh)
    return path


def consume_coordinator(tm_path: str, n: int, ready: str, out: str, profile: str) -> None:
    """The coordinator's hot path on the messages of one round of n updates."""
    from fedmq.coordinator.service import CoordinatorService
    from fedmq.shared.messages import Control, TrainParams
    from fedmq.shared.topicmap import load_topic_map

    svc = CoordinatorService(load_topic_map(tm_path), fresh=True)
    root = svc.groups[()]
    done: Dict[str, float] = {}
    root.on_root_close = lambda ctl, result: done.update(t=time.time(), nodes=len(result.nodes))
    svc.link.start()
    nodes = [f"n{i:05d}" for i in range(n)]
    root.start(Control(type="start", round=1, attempt=1, model_version=0, deadline_at=time.time() + 3600,
                       selected=nodes, train=TrainParams(1, 32, 0.1)))
    svc.link.flush()
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    cpu0 = cpu_s()
    open(ready, "w").close()
    while "t" not in done:
        msg = svc.link.get(timeout=0.5)
        if msg is not None:
            svc.dispatch(msg)
    if profiler is not None:
        profiler.stop()
        with open(profile, "w") as fh:
            fh.write(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False), file=sys.stderr)
    with open(out, "w") as fh:
        json.dump({"last": done["t"], "aggregated": done["nodes"], "rss_mb": vm_hwm_mb(), "cpu_s": cpu_s() - cpu0,
                   "rejected": dict(svc.rejections.total)}, fh)
    svc.link.stop()


def consume_bare(port: int, n: int, ready: str, out: str) -> None:
    """A paho subscriber that only counts the same messages."""
    import threading

    import paho.mqtt.client as mqtt

    got = {"n": 0, "last": 0.0}
    finished = threading.Event()

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        got["n"] += 1
        got["last"] = time.time()
        if got["n"] >= n:
            finished.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare", protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe(f"fedmq/v1/{FED}/_update/+", qos=1)
    c.loop_start()
    time.sleep(0.5)
    cpu0 = cpu_s()
    open(ready, "w").close()
    finished.wait()
    c.loop_stop()
    with open(out, "w") as fh:
        json.dump({"last": got["last"], "received": got["n"], "rss_mb": vm_hwm_mb(), "cpu_s": cpu_s() - cpu0}, fh)


def publish(port: int, params: int, n: int, start_file: str) -> None:
    """Encode n distinct updates first, then publish them all as fast as QoS 1 allows."""
    import paho.mqtt.client as mqtt

    from fedmq.shared.envelope import Envelope, Kind, encode

    features = params // 10 - 1
    rng = np.random.default_rng(0)
    base = {"coef": rng.normal(0, 0.1, (10, features)).astype(np.float32), "intercept": np.zeros(10, np.float32)}
    payloads = []
    for i in range(n):
        t = {"coef": base["coef"] + np.float32(i * 1e-4), "intercept": base["intercept"]}
        payloads.append(encode(Envelope(kind=Kind.UPDATE, federation=FED, round=1, attempt=1, sender=f"n{i:05d}",
                                        model_version=0, tensors=t, samples=10)))
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="publisher", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    with open(start_file, "w") as fh:
        fh.write(repr(time.time()))
    infos = [c.publish(f"fedmq/v1/{FED}/_update/n{i:05d}", p, qos=1) for i, p in enumerate(payloads)]
    for info in infos:
        info.wait_for_publish(120)
    c.loop_stop()


def run_case(params: int, n: int, profile: str = "") -> Dict[str, float]:
    """One model size, n updates: both consumers and the publisher against a fresh Mosquitto."""
    from fedmq.broker.process import MosquittoProcess

    work = tempfile.mkdtemp(prefix="fedmq-ingest-")
    broker = MosquittoProcess(os.path.join(work, "broker"), persistence=False,
                              max_packet_bytes=64 * 1024 * 1024).start()
    tm = topic_map(os.path.join(work, "fed.yaml"), broker.port, params, n)
    f = {k: os.path.join(work, k) for k in ("ready-c", "ready-b", "out-c", "out-b", "start")}
    me = [sys.executable, os.path.abspath(__file__)]
    procs: List[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(me + ["--role", "coordinator", tm, str(n), f["ready-c"], f["out-c"], profile]))
        procs.append(subprocess.Popen(me + ["--role", "bare", str(broker.port), str(n), f["ready-b"], f["out-b"]]))
        end = time.monotonic() + 60
        while not (os.path.exists(f["ready-c"]) and os.path.exists(f["ready-b"])):
            if time.monotonic() > end:
                raise RuntimeError("consumers did not get ready")
            time.sleep(0.05)
        pub = subprocess.Popen(me + ["--role", "publish", str(broker.port), str(params), str(n), f["start"]])
        procs.append(pub)
        for p in procs:
            if p.wait(600) != 0:
                raise RuntimeError(f"{p.args} failed")
        t0 = float(open(f["start"]).read())
        c, b = json.load(open(f["out-c"])), json.load(open(f["out-b"]))
        if c["aggregated"] != n or b["received"] != n:
            raise RuntimeError(f"lost messages: coordinator {c}, bare {b}")
        return {"params": params, "updates": n, "coordinator_per_s": n / (c["last"] - t0),
                "bare_per_s": n / (b["last"] - t0), "coordinator_rss_mb": c["rss_mb"], "bare_rss_mb": b["rss_mb"],
                "coordinator_cpu_us": c["cpu_s"] / n * 1e6, "bare_cpu_us": b["cpu_s"] / n * 1e6,
                "mb_per_update": params * 4 / 1e6}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, nargs="+", default=sorted(UPDATES), help="model sizes to measure")
    ap.add_argument(
        "--profile",
        default="",
        help="profile the coordinator at the first --params size into this HTML file "
        "(pyinstrument; pip install 'fedmq-coordinator[bench]')",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per model size; the median run is shown (default 3)")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "coordinator":
            consume_coordinator(rest[0], int(rest[1]), rest[2], rest[3], rest[4] if len(rest) > 4 else "")
        elif role == "bare":
            consume_bare(int(rest[0]), int(rest[1]), rest[2], rest[3])
        else:
            publish(int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        return
    print(
        f"{'params':>10} {'updates':>8} {'MB/update':>9} {'coordinator/s':>14} {'bare paho/s':>12} {'ratio':>6} "
        f"{'coord RSS MB':>12} {'CPU us/msg coord':>16} {'bare':>5}",
        flush=True,
    )
    for params in args.params:
        runs = [
            run_case(params, UPDATES.get(params, 200), args.profile if params == args.params[0] and i == 0 else "")
            for i in range(args.repeat)
        ]
        runs.sort(key=lambda r: r["coordinator_per_s"] / r["bare_per_s"])
        r = runs[len(runs) // 2]
        print(
            f"{params:>10,} {r['updates']:>8} {r['mb_per_update']:>9.2f} {r['coordinator_per_s']:>14.1f} "
            f"{r['bare_per_s']:>12.1f} {r['coordinator_per_s'] / r['bare_per_s']:>6.2f} "
            f"{r['coordinator_rss_mb']:>12.1f} {r['coordinator_cpu_us']:>16.0f} {r['bare_cpu_us']:>5.0f}   "
            "(ratios of all runs: "
            + ", ".join(f"{x['coordinator_per_s'] / x['bare_per_s']:.2f}" for x in runs)
            + ")",
            flush=True,
        )
    print("\npeak coordinator RSS against the number of updates (100k parameters):", flush=True)
    for n in RSS_COUNTS:
        r = run_case(100_000, n)
        print(
            f"  {n:>4} updates: {r['coordinator_rss_mb']:.1f} MB (bare subscriber {r['bare_rss_mb']:.1f} MB)",
            flush=True,
        )


if __name__ == "__main__":
    main()
