"""Serving costs on a gateway: latency per prediction (numpy and TFLite) and the node's peak RSS with
serving on, beside the same node with serving off, measured in one run.

Usage: .venv/bin/python bench/serving.py [--days 7] [--seconds 20] [--node-python PY]

Latency: the smart-home occupancy model (softmax regression, 13 features) and a TFLite MLP (13-32-2) on one
sample, median of 5,000 calls, the model alone and the whole step a serving period takes (the newest rows
read from a store holding DAYS days at a 5-minute period, the feature window computed, the prediction made).
RSS: real ``fedmq node run`` processes on a private Mosquitto (numpy trainer, a saved global model, no
coordinator) for a simulated home whose DAYS days of sensor history are published to them; one serves a
prediction every 0.1 s for SECONDS seconds, the other does not serve; then the same with the TFLite model
served through the TFLite runtime. Peak RSS is each process's VmHWM. Needs mosquitto (./install.sh).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from fedmq.broker.process import MosquittoProcess
from fedmq.coordinator.sim.homes import Simulation
from fedmq.coordinator.sim.publish import Publisher
from fedmq.coordinator.sim.scenario import OCCUPANCY_FEATURES, node_config, width, write_yaml
from fedmq.coordinator.tflite_builder import build_dense_model
from fedmq.node.agent import global_model_path
from fedmq.node.config import load_node_config
from fedmq.node.serve.predictors import make_predictor
from fedmq.shared.data import open_source
from fedmq.shared.models import initial_weights
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.saved_model import SavedModel
from fedmq.shared.scaling import Scaling
from fedmq.shared.topicmap import ModelSpec
from fedmq.shared.topicmap.model import BrokerSettings

PERIOD_S = 300.0
FEATURES = width(OCCUPANCY_FEATURES)
NUMPY_SPEC = ModelSpec(kind="softmax_regression", features=FEATURES, classes=(0, 1))
TFLITE_SPEC = ModelSpec(kind="tflite", features=FEATURES, classes=(0, 1), hidden=(32,), options={"output": "softmax"})


def saved(spec: ModelSpec, file_sha: str = "") -> SavedModel:
    """A model of ``spec`` with seeded weights and a plausible scaling."""
    rng = np.random.default_rng(0)
    weights = {k: (rng.normal(size=v.shape) * 0.3).astype(np.float32) for k, v in initial_weights(spec).items()}
    scaling = Scaling(tuple([0.0] * spec.features), tuple([1.0] * spec.features), 1000.0)
    return SavedModel(spec, weights, scaling, "bench", 20, 20, file_sha256=file_sha)


def median_us(fn: Callable[[], Any], n: int = 5000) -> float:
    """Median wall time of ``fn`` in microseconds (timed in batches of 10 calls)."""
    fn()
    times = []
    for _ in range(n // 10):
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        times.append((time.perf_counter() - t0) / 10 * 1e6)
    return statistics.median(times)


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a live process."""
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def gateway(workdir: str, name: str, broker: BrokerSettings, sim: Simulation, serve: bool, model: SavedModel,
            tflite: Optional[bytes]) -> str:
    """A node configuration for the simulated home, with ``model`` saved in its cache."""
    cache = os.path.join(workdir, f"cache-{name}")
    extra: Dict[str, Any] = {"cache_dir": cache, "trainer": "numpy", "node_id": f"gw-{name}"}
    if serve:
        extra["serve"] = {"topic": f"bench/{name}", "period_s": 0.1, "homeassistant": {"device_id": name},
                          "runtime": "tflite" if tflite else "numpy"}
    cfg = node_config(sim.homes[0], "bench", broker, PERIOD_S, store=os.path.join(workdir, f"{name}.sqlite"),
                      extra=extra)
    path = os.path.join(workdir, f"{name}.yaml")
    write_yaml(path, cfg)
    os.makedirs(cache, exist_ok=True)
    model.save(global_model_path(cache, extra["node_id"]))
    if tflite:
        with open(os.path.join(cache, f"{model.file_sha256}.tflite"), "wb") as fh:
            fh.write(tflite)
    return path


def latency(workdir: str, days: float, tflite: bytes, tflite_model: SavedModel) -> Dict[str, float]:
    """Microseconds per prediction: model alone, and the whole serving step on a filled store."""
    sim = Simulation(1, 0, PERIOD_S)
    path = gateway(workdir, "latency", BrokerSettings(), sim, False, saved(NUMPY_SPEC), None)
    source = open_source(load_node_config(path).data)
    store = source._open_store()
    pairs = [(topic, payload) for _, topic, payload in sim.run(days * 86400)]
    from fedmq.node.sources.mqtt_source import Ingest
    from fedmq.node.sources.sampler import Sampler

    ingest = source.ingest = Ingest(
        source.signals,
        Sampler(source.signals, PERIOD_S, source.options["max_age_s"], store.append),
        source.options["clock_topic"],
    )
    for topic, payload in pairs:
        ingest.feed(topic, payload)
    store.flush()
    x, _ = source.current()
    row = x.reshape(1, -1)
    numpy_predict = make_predictor("numpy", saved(NUMPY_SPEC), None)
    tflite_predict = make_predictor("tflite", tflite_model, tflite)
    out = {
        "rows": float(store.count()),
        "numpy_model_us": median_us(lambda: numpy_predict(row)),
        "numpy_step_us": median_us(lambda: numpy_predict(source.current()[0].reshape(1, -1)), 2000),
        "numpy_mlp_us": median_us(lambda: tflite_model.predict(row)),
        "tflite_model_us": median_us(lambda: tflite_predict(row)),
        "tflite_step_us": median_us(lambda: tflite_predict(source.current()[0].reshape(1, -1)), 2000),
    }
    source.stop()
    return out


def rss(
    workdir: str, days: float, seconds: float, python: str, tflite: bytes, tflite_model: SavedModel
) -> Dict[str, float]:
    """Peak RSS (MB) of nodes serving (numpy, tflite) and not serving, and the predictions each published."""
    with MosquittoProcess(os.path.join(workdir, "broker")) as broker_proc:
        broker = BrokerSettings(host=broker_proc.host, port=broker_proc.port)
        sim = Simulation(1, 0, PERIOD_S)
        cases = {
            "serving off": gateway(workdir, "off", broker, sim, False, saved(NUMPY_SPEC), None),
            "serving on, numpy": gateway(workdir, "numpy", broker, sim, True, saved(NUMPY_SPEC), None),
            "serving on, TFLite": gateway(workdir, "tflite", broker, sim, True, tflite_model, tflite),
        }
        watch = MqttLink("bench-serving-watch", broker, persistent=False)
        watch.subscribe("bench/+/state")
        watch.start()
        procs = {
            name: subprocess.Popen(
                [python, "-m", "fedmq.shared.cli", "node", "run", path],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, path in cases.items()
        }
        time.sleep(3)  # the data links subscribe
        with Publisher(broker) as pub:
            pub.publish(list(sim.run(days * 86400)))
        served: Dict[str, int] = {"numpy": 0, "tflite": 0}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msg = watch.get(timeout=0.2)
            if msg is not None and json.loads(msg.payload).get("value") is not None:
                served[msg.topic.split("/")[1]] += 1
        out = {name: vm_hwm_mb(p.pid) for name, p in procs.items()}
        for p in procs.values():
            p.terminate()
            p.wait(30)
        watch.stop()
    out.update({f"predictions, {k}": float(v) for k, v in served.items()})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=float, default=7.0, help="days of sensor history in the store (default 7)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long the nodes serve (default 20)")
    p.add_argument(
        "--node-python",
        default=sys.executable,
        help="the Python of the measured nodes (e.g. a gateway venv's; default this one)",
    )
    args = p.parse_args(argv)
    tflite_model = saved(TFLITE_SPEC)
    tflite = build_dense_model(TFLITE_SPEC, tflite_model.weights, 0.01)
    tflite_model = replace(tflite_model, file_sha256=hashlib.sha256(tflite).hexdigest())
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-serving-") as workdir:
        lat = latency(workdir, args.days, tflite, tflite_model)
        mem = rss(workdir, args.days, args.seconds, args.node_python, tflite, tflite_model)
    print(f"store: {lat['rows']:.0f} rows ({args.days:g} days at {PERIOD_S:g} s); one sample of {FEATURES} features")
    print(f"{'':<40} {'numpy':>10} {'TFLite':>10}")
    print(f"{'model only, softmax regression (us)':<40} {lat['numpy_model_us']:>10.1f} {'':>10}")
    print(f"{'model only, MLP 13-32-2 (us)':<40} {lat['numpy_mlp_us']:>10.1f} {lat['tflite_model_us']:>10.1f}")
    print(f"{'serving step: window + model (us)':<40} {lat['numpy_step_us']:>10.1f} {lat['tflite_step_us']:>10.1f}")
    for name, value in mem.items():
        print(f"{name:<40} {value:>10.1f}" + (" MB peak RSS" if not name.startswith("predictions") else ""))
    print(f"ratio serving on (numpy) / off: {mem['serving on, numpy'] / mem['serving off']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
