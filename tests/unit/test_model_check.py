"""``fedmq model check`` passes good files and catches the known traps; runtime selection explains itself."""

import subprocess
import sys

import pytest

from fedmq.coordinator.tflite_builder import build_dense_model, dense
from fedmq.node.model_check import check_model
from fedmq.node.trainers import TrainerUnavailable, make_trainer, tflite_runtime
from fedmq.shared.models import initial_weights
from fedmq.shared.topicmap import ModelSpec

SPEC = ModelSpec("tflite", 6, (0, 1, 2), hidden=(4,), options={"output": "softmax"})


def test_good_model_passes(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(build_dense_model(SPEC, initial_weights(SPEC), 0.1))
    r = subprocess.run(
        [sys.executable, "-m", "fedmq.shared.cli", "model", "check", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: this model can be trained" in r.stdout and "layers.1.weight" in r.stdout and "FAIL" not in r.stdout


def test_folded_batch_size_is_caught(monkeypatch):
    monkeypatch.setattr(dense._Net, "batch_size", lambda self, x: self.g.const([1.0]))
    report = check_model(build_dense_model(SPEC, initial_weights(SPEC), 0.1))
    assert not report.ok
    assert [t for ok, t in report.results if not ok][0].startswith("the batch size is dynamic")


def test_not_a_model_is_reported_not_raised(tmp_path):
    report = check_model(b"definitely not a flatbuffer")
    assert not report.ok and "loads" in report.results[0][1]
    path = tmp_path / "bad.tflite"
    path.write_bytes(b"junk")
    r = subprocess.run(
        [sys.executable, "-m", "fedmq.shared.cli", "model", "check", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_missing_runtime_names_the_extra(monkeypatch):
    monkeypatch.setattr(
        tflite_runtime,
        "CANDIDATES",
        (("no_such_runtime_a", "Interpreter", "a"), ("no_such_runtime_b", "Interpreter", "b")),
    )
    with pytest.raises(TrainerUnavailable, match=r"pip install 'fedmq-node\[tflite\]'"):
        make_trainer("auto", SPEC, build_dense_model(SPEC, initial_weights(SPEC), 0.1))


def test_runtime_preference_order():
    assert [name for _, _, name in tflite_runtime.CANDIDATES] == ["ai-edge-litert", "tflite-runtime", "tensorflow"]
    assert tflite_runtime.find_interpreter()[1] == "ai-edge-litert"  # what ./install.sh installs here
