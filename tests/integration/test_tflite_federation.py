"""TFLite nodes in real federations: model files by hash over MQTT, and FedAvg equal to numpy nodes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fedhelp import FED, checkpoint_file, fedmq, stop, tflite_federation, wait_for, wait_online
from fedhelp import TWO_HOMES as GROUPS
from fedmq.coordinator.rounds import build_model_file
from fedmq.shared.envelope import Envelope, Kind, decode, encode
from fedmq.shared.models import initial_weights
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import BrokerSettings, ModelSpec, load_topic_map
from fedmq.shared.topics import Topics


def run_federation(tmp_path, port, trainer):
    paths = tflite_federation(tmp_path, port, trainer)
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
    # every node in from round 1 (a node still starting on a busy machine would change the rounds' sums)
    wait_online(port, {n: (g,) for g, ns in GROUPS.items() for n in ns}, timeout=60)
    coord = fedmq(["coordinator", "run", paths["topic_map"], "--fresh"], str(tmp_path / "coord.log"))
    try:
        assert coord.wait(90) == 0, (tmp_path / "coord.log").read_text()
    finally:
        stop([coord, *nodes])
    with open(checkpoint_file(tmp_path / "ckpt", "model.fmq"), "rb") as fh:
        return decode(fh.read()).tensors


def test_fedavg_over_tflite_nodes_equals_fedavg_over_numpy_nodes(broker, tmp_path):
    tfl = run_federation(tmp_path / "tflite", broker.port, "tflite")
    assert "trainer tflite" in (tmp_path / "tflite" / "a1.log").read_text()
    ref = run_federation(tmp_path / "numpy", broker.port, "numpy")
    assert "trainer numpy" in (tmp_path / "numpy" / "a1.log").read_text()
    assert set(tfl) == set(ref)
    for name in ref:
        np.testing.assert_allclose(tfl[name], ref[name], rtol=1e-4, atol=1e-5)
    init = initial_weights(ModelSpec("tflite", 8, (0, 1, 2), hidden=(6,), seed=4, options={"output": "softmax"}))
    assert not np.allclose(tfl["layers.0.weight"], init["layers.0.weight"])  # it did train


def test_node_refuses_a_model_file_that_does_not_match_its_hash(broker, tmp_path):
    paths = tflite_federation(tmp_path, broker.port, "auto")
    topics = Topics(FED)
    tm = load_topic_map(paths["topic_map"])
    sha, good = build_model_file(tm, initial_weights(tm.model))
    model = Envelope(
        Kind.MODEL,
        FED,
        0,
        "coordinator",
        0,
        initial_weights(tm.model),
        meta={"model": tm.model.to_meta(), "file": {"sha256": sha, "bytes": len(good), "format": "tflite"}},
    )
    pub = MqttLink("test-publisher", BrokerSettings(port=broker.port))
    pub.start()
    forged = good.replace(b"fedmq", b"evil!")
    pub.publish(topics.model_file(sha), forged, retain=True)
    pub.publish(topics.model(), encode(model), retain=True)
    pub.flush()
    node = fedmq(["node", "run", paths["a1"]], str(tmp_path / "a1.log"))
    try:
        wait_for(lambda: "model file refused" in (tmp_path / "a1.log").read_text(), 20, "the refusal")
        assert "trainer tflite" not in (tmp_path / "a1.log").read_text()
        pub.publish(topics.model_file(sha), good, retain=True)  # the genuine file arrives
        wait_for(lambda: "trainer tflite" in (tmp_path / "a1.log").read_text(), 20, "the genuine file")
    finally:
        stop([node])
        pub.stop()
    cached = list((tmp_path / ".fedmq-cache").glob("*.tflite"))
    assert [p.name for p in cached] == [f"{sha}.tflite"] and cached[0].read_bytes() == good


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tflite-mlp", "tflite-logreg"])
def test_demo_with_tflite_nodes_matches_numpy_nodes(tmp_path, model):
    acc = {}
    for trainer in ("auto", "numpy"):
        report = tmp_path / f"{trainer}.json"
        work = tmp_path / trainer
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedmq.shared.cli",
                "demo",
                "--model",
                model,
                "--trainer",
                trainer,
                "--report",
                str(report),
                "--workdir",
                str(work),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        acc[trainer] = json.loads(report.read_text())["final_accuracy"]
        log = (work / "logs" / "home1-node01.log").read_text()
        assert f"trainer {'tflite' if trainer == 'auto' else 'numpy'}" in log
    assert acc["auto"] >= 0.9
    assert abs(acc["auto"] - acc["numpy"]) <= 0.02, acc
