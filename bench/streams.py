"""Stream data source: sensor messages per second into a gateway's store, the node's peak RSS with 30 days
of history kept, the store's size on disk, and the time to build a round's training set from it.

Usage: .venv/bin/python bench/streams.py [--signals 20] [--days 30] [--messages 200000] [--node-python PY]

A private Mosquitto starts; a real ``fedmq node run`` process (numpy trainer, no coordinator) runs a
``kind: mqtt`` source with SIGNALS signals at a 1-minute period whose store already holds DAYS days of
rows (written beforehand through the same store code). One publisher process sends MESSAGES JSON
readings (zigbee2mqtt-style, one device per signal) plus the clock as fast as it can at QoS 1; the rate
is the messages over the time from the publisher's start until the node has committed the last period's
row. Side by side, in the same run, a bare paho subscriber counts the same messages, to show how much of
the ceiling is MQTT itself. Then a coordinator runs a federation of that one gateway (a statistics round and
two training rounds on the whole store) and the node's peak RSS is read. Needs mosquitto (./install.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

PERIOD_S = 60.0
START = 1_767_225_600  # 2026-01-01T00:00:00Z
CLOCK = "bench/clock"


def node_config(tmp: str, port: int, signals: int) -> str:
    """A node whose mqtt source has ``signals`` signals and a feature set of the usual kinds."""
    features = [{"signal": f"s{i}"} for i in range(signals)]
    features += [{"signal": "s0", "kind": k, "window": 15} for k in ("mean", "std", "slope")]
    features += [{"signal": "s1", "kind": "lag", "steps": [1, 5, 15]}, {"kind": "time_of_day"}, {"kind": "day_of_week"}]
    cfg = {"node_id": "gw", "federation": "bench", "group": "", "trainer": "numpy",
           "broker": {"host": "127.0.0.1", "port": port}, "cache_dir": os.path.join(tmp, "cache"),
           "data": {"kind": "mqtt", "broker": {"host": "127.0.0.1", "port": port}, "clock_topic": CLOCK,
                    "timezone": "UTC", "period_s": PERIOD_S, "max_age_s": 300,
                    "store": {"path": os.path.join(tmp, "store.sqlite"), "max_age_days": 30},
                    "signals": [{"name": f"s{i}", "zigbee2mqtt": f"dev{i}", "field": "value",
                                 **({"aggregate": "mean"} if i % 2 else {})} for i in range(signals)],
                    "features": features, "label": {"signal": f"s{signals - 1}", "horizon_s": 3600}}}
    path = os.path.join(tmp, "node.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def prefill(path: str, signals: int, days: float, end: int) -> int:
    """DAYS days of rows ending at ``end``, through the node's own store code."""
    from fedmq.node.config import load_node_config
    from fedmq.node.sources.store import SampleStore

    o = load_node_config(path).data.options
    st = SampleStore(o["store"]["path"], [f"s{i}" for i in range(signals)], PERIOD_S,
                     max_age_s=o["store"]["max_age_days"] * 86400, max_rows=o["store"]["max_rows"])
    rng = np.random.default_rng(0)
    n = int(days * 86400 / PERIOD_S)
    for k in range(n):
        st.append(end - (n - k) * int(PERIOD_S), rng.normal(20, 3, signals))
    st.close()
    return n


def publisher(port: int, signals: int, messages: int, t0: int) -> None:
    """Child process: the readings, a clock tick per period, as fast as QoS 1 goes."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    rng = np.random.default_rng(1)
    periods = messages // signals
    last = None
    for k in range(periods + 1):
        c.publish(CLOCK, str(t0 + k * int(PERIOD_S)).encode(), qos=1)
        if k == periods:
            break
        for i in range(signals):
            last = c.publish(f"zigbee2mqtt/dev{i}", json.dumps({"value": round(float(rng.normal(20, 3)), 2),
                                                                 "linkquality": 120}).encode(), qos=1)
        if k % 100 == 0:
            last.wait_for_publish(30)
    last.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def counter(port: int, signals: int, messages: int, out: str) -> None:
    """Child process: a bare paho subscriber that counts the readings (the MQTT ceiling, side by side)."""
    import paho.mqtt.client as mqtt

    got = [0]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-count", protocol=mqtt.MQTTv5)

    def on_message(*_: object) -> None:
        got[0] += 1

    c.on_message = on_message
    c.on_connect = lambda cl, *_: cl.subscribe([("zigbee2mqtt/+", 1)])
    c.connect("127.0.0.1", port)
    c.loop_start()
    while got[0] < messages:
        time.sleep(0.005)
    with open(out, "w") as fh:
        fh.write(str(time.time()))
    c.loop_stop()


def width(cfg: str) -> int:
    """Columns of x the node's declared features make."""
    from fedmq.node.config import load_node_config

    return sum(f.width for f in load_node_config(cfg).data.options["features"])


def rows_at_least(store: str, t: int) -> bool:
    try:
        with sqlite3.connect(store, timeout=1) as db:
            return (db.execute("SELECT MAX(t) FROM rows").fetchone()[0] or 0) >= t
    except sqlite3.Error:
        return False


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--signals", type=int, default=20)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--node-python", default=sys.executable,
                    help="interpreter of the node process, e.g. a virtual environment with only fedmq-shared and "
                         "fedmq-node installed, as on a gateway (default: this one)")
    args = ap.parse_args()
    from fedmq.broker.process import MosquittoProcess
    from fedmq.node.config import load_node_config
    from fedmq.shared.data import open_source

    with tempfile.TemporaryDirectory(prefix="fedmq-bench-streams-") as tmp, \
            MosquittoProcess(os.path.join(tmp, "broker")) as broker:
        cfg = node_config(tmp, broker.port, args.signals)
        t0 = START + int(args.days * 86400)
        prefilled = prefill(cfg, args.signals, args.days, t0)
        store = load_node_config(cfg).data.options["store"]["path"]
        log = open(os.path.join(tmp, "node.log"), "wb")
        node = subprocess.Popen([args.node_python, "-m", "fedmq.shared.cli", "node", "run", cfg], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while b"subscribed to" not in open(os.path.join(tmp, "node.log"), "rb").read():
                if time.monotonic() > deadline:
                    raise SystemExit("the node did not subscribe; see " + os.path.join(tmp, "node.log"))
                time.sleep(0.1)
            done_file = os.path.join(tmp, "counter.done")
            here = os.path.abspath(__file__)
            count = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"import sys; sys.path.insert(0, {os.path.dirname(here)!r}); "
                    f"import streams; streams.counter({broker.port}, {args.signals}, "
                    f"{args.messages // args.signals * args.signals}, {done_file!r})",
                ]
            )
            time.sleep(1.0)
            start = time.time()
            pub = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"import sys; sys.path.insert(0, {os.path.dirname(here)!r}); "
                    f"import streams; streams.publisher({broker.port}, {args.signals}, "
                    f"{args.messages}, {t0})",
                ]
            )
            last_period = t0 + (args.messages // args.signals - 1) * int(PERIOD_S)
            while not rows_at_least(store, last_period):
                if node.poll() is not None:
                    raise SystemExit("the node exited; see " + os.path.join(tmp, "node.log"))
                time.sleep(0.02)
            node_s = time.time() - start
            pub.wait(120)
            count.wait(120)
            bare_s = float(open(done_file).read()) - start
            # a federation of this one gateway: a statistics round and two training rounds on the whole store
            fed = os.path.join(tmp, "fed.yaml")
            with open(fed, "w", encoding="utf-8") as fh:
                yaml.safe_dump(
                    {
                        "federation": "bench",
                        "broker": {"host": "127.0.0.1", "port": broker.port},
                        "model": {"kind": "sgd_regressor", "features": width(cfg)},
                        "rounds": {
                            "rounds": 2,
                            "min_nodes": 1,
                            "deadline_s": 60,
                            "local_epochs": 1,
                            "learning_rate": 0.01,
                        },
                        "scaling": "federated",
                        "tree": {"nodes": ["gw"]},
                    },
                    fh,
                )
            coordinator = subprocess.run(
                [sys.executable, "-m", "fedmq.shared.cli", "coordinator", "run", fed, "--quiet"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if coordinator.returncode != 0:
                raise SystemExit("the federation failed: " + coordinator.stderr[-2000:])
            peak = vm_hwm_mb(node.pid)
        finally:
            node.terminate()
            node.wait(10)
        size = sum(os.path.getsize(p) for p in (store, store + "-wal") if os.path.exists(p))
        source = open_source(load_node_config(cfg).data)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            x, y = source.load()
            times.append(time.perf_counter() - t)
        sent = args.messages // args.signals * args.signals
        print(
            json.dumps(
                {
                    "signals": args.signals,
                    "period_s": PERIOD_S,
                    "days_kept": args.days,
                    "rows_prefilled": prefilled,
                    "messages": sent,
                    "node_messages_per_s": round(sent / node_s),
                    "bare_paho_messages_per_s": round(sent / bare_s),
                    "node_over_bare": round(bare_s / node_s, 2),
                    "node_peak_rss_mb": round(peak, 1),
                    "store_mb": round(size / 1e6, 2),
                    "rows": source._open_store().count(),
                    "training_set": list(x.shape),
                    "assemble_s_median": round(float(np.median(times)), 4),
                },
                indent=1,
            )
        )
        source.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
