"""The shipped example topic maps and node configs are valid and load."""

import glob
import os

import pytest

from fedmq.node.config import load_node_config
from fedmq.shared.data import open_source
from fedmq.shared.topicmap import load_topic_map

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "examples")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(EXAMPLES, "*.yaml"))))
def test_example_topic_maps_validate(path):
    tm = load_topic_map(path)
    assert tm.root.children


def test_example_node_config_loads_its_csv():
    cfg = load_node_config(os.path.join(EXAMPLES, "smart-home", "kitchen-hub.yaml"))
    x, y = open_source(cfg.data).load()
    assert x.shape == (60, 64) and len(y) == 60 and cfg.group == ("kitchen",)
    assert load_topic_map(os.path.join(EXAMPLES, "smart-home.yaml")).group_of(cfg.node_id).path == cfg.group


def test_demo_model_names_all_have_settings():
    from fedmq.coordinator.demo.cli import MODELS
    from fedmq.coordinator.demo.federation import LEARNING_RATE

    assert sorted(MODELS) == sorted(LEARNING_RATE)


def test_tflite_example_builds_and_checks(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m.tflite"
    cmd = [sys.executable, "-m", "fedmq.shared.cli"]
    r = subprocess.run(cmd + ["coordinator", "build-model", os.path.join(EXAMPLES, "tflite-sensors.yaml"), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "sha256" in r.stdout, r.stderr
    assert subprocess.run(cmd + ["model", "check", str(out)], capture_output=True).returncode == 0
