"""``fedmq model export`` from a checkpoint and from the broker's retained model (real Mosquitto), in npz and
tflite, and ``fedmq model predict`` with each: the same predictions as the model itself."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from fedmq.coordinator import checkpoint
from fedmq.shared.envelope import Envelope, Kind, encode
from fedmq.shared.models import initial_weights
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.saved_model import read_model
from fedmq.shared.scaling import Scaling
from fedmq.shared.topicmap import ModelSpec
from fedmq.shared.topicmap.model import BrokerSettings
from fedmq.shared.topics import Topics

SPEC = ModelSpec(kind="mlp", features=3, classes=(0, 1, 2), hidden=(4,))
SCALING = Scaling((1.0, -2.0, 0.5), (2.0, 1.0, 3.0), 10.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "model", *args], capture_output=True, text=True,
                          timeout=120)


def _weights():
    rng = np.random.default_rng(4)
    return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in initial_weights(SPEC).items()}


def _csv(path, x, labels) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["f0", "f1", "f2", "label"])
        for row, label in zip(x, labels):
            w.writerow([*(f"{v:.6f}" for v in row), label])


def _predictions(out: str):
    rows = list(csv.reader(out.splitlines()))
    assert rows[0] == ["prediction", "confidence", "p_0", "p_1", "p_2"]
    return [r[0] for r in rows[1:]], np.array([[float(v) for v in r[2:]] for r in rows[1:]])


def test_export_a_checkpoint_as_npz_and_tflite_and_predict_with_both(tmp_path):
    weights = _weights()
    checkpoint.save(str(tmp_path / "ck"), "fed", SPEC, weights,
                    checkpoint.RoundState(rounds_done=9, model_version=9, scaling=SCALING.to_meta()))
    x = np.random.default_rng(5).normal(size=(30, 3)) * 2
    _csv(tmp_path / "data.csv", x, [0] * 30)
    r = _cli("export", str(tmp_path / "ck"), "-o", str(tmp_path / "m.npz"), "--feature-names", "f0,f1,f2")
    assert r.returncode == 0 and "model 9 of federation fed" in r.stdout, r.stderr
    model = read_model(str(tmp_path / "m.npz"))
    expected = model.predict(x.astype(np.float32))
    p = _cli("predict", str(tmp_path / "m.npz"), str(tmp_path / "data.csv"))
    assert p.returncode == 0, p.stderr
    values, probs = _predictions(p.stdout)
    assert values == [str(v) for v in expected.values] and np.allclose(probs, expected.probabilities, atol=1e-5)
    assert "accuracy" in p.stderr and "on 30 samples" in p.stderr

    pytest.importorskip("flatbuffers")
    r = _cli("export", str(tmp_path / "ck"), "--format", "tflite", "-o", str(tmp_path / "m.tflite"))
    assert r.returncode == 0 and os.path.exists(tmp_path / "m.tflite.json"), r.stderr
    p = _cli("predict", str(tmp_path / "m.tflite"), str(tmp_path / "data.csv"))
    if "no TFLite runtime" in p.stderr:
        pytest.skip("no TFLite runtime here")
    assert p.returncode == 0, p.stderr
    values, probs = _predictions(p.stdout)
    assert values == [str(v) for v in expected.values] and np.allclose(probs, expected.probabilities, atol=1e-4)


def test_export_the_brokers_retained_model_and_refuse_what_is_not_ours(broker, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(4))
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({"node_id": "gw", "federation": "fed", "data": {"kind": "npz", "path": "d.npz"},
                                    "broker": {"host": broker.host, "port": broker.port}}))
    r = _cli("export", "--from-broker", str(node), "-o", str(tmp_path / "m.npz"))
    assert r.returncode == 2 and "no retained global model" in r.stderr

    env = Envelope(kind=Kind.MODEL, federation="fed", round=12, sender="coordinator", model_version=12,
                   tensors=_weights(), meta={"model": SPEC.to_meta(), "scaling": SCALING.to_meta()})
    link = MqttLink("export-test-publisher", BrokerSettings(host=broker.host, port=broker.port), persistent=False)
    link.start()
    try:
        link.publish(Topics("fed").model(), encode(env), retain=True)
        r = _cli("export", "--from-broker", str(node), "-o", str(tmp_path / "m.npz"))
        assert r.returncode == 0, r.stderr
        got = read_model(str(tmp_path / "m.npz"))
        assert got.model_version == 12 and got.scaling == SCALING and got.spec == SPEC
        assert all(np.array_equal(got.weights[k], v) for k, v in env.tensors.items())

        link.publish(Topics("fed").model(), encode(Envelope(**{**env.__dict__, "federation": "other"})), retain=True)
        r = _cli("export", "--from-broker", str(node), "-o", str(tmp_path / "m2.npz"))
        assert r.returncode == 2 and "refused: federation 'other', not 'fed'" in r.stderr
        assert not os.path.exists(tmp_path / "m2.npz")
    finally:
        link.publish(Topics("fed").model(), b"", retain=True)
        link.stop()
