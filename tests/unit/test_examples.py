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


@pytest.mark.parametrize("home", ["home1", "home2", "home3"])
def test_smart_home_gateways_learn_from_their_streams(home, tmp_path):
    """Each example gateway (zigbee2mqtt, Tasmota, statestream) is admitted by the example topic map, and the
    simulator's streams in its home's format give exactly the features the model takes."""
    from dataclasses import replace

    from fedmq.coordinator.sim.homes import CLOCK_TOPIC, Simulation
    from fedmq.shared.datacheck import checked_data

    cfg = load_node_config(os.path.join(EXAMPLES, "smart-home", f"{home}-gw.yaml"))
    tm = load_topic_map(os.path.join(EXAMPLES, "smart-home.yaml"))
    assert tm.group_of(cfg.node_id).path == cfg.group and cfg.data.kind == "mqtt"
    source = open_source(
        replace(
            cfg.data,
            options={
                **cfg.data.options,
                "clock_topic": CLOCK_TOPIC,
                "store": {**cfg.data.options["store"], "path": str(tmp_path / "s")},
            },
        )
    )
    assert source.load()[0].shape == (0, tm.model.features)  # no store yet, and checking made none
    assert not os.path.exists(cfg.data.options["store"]["path"])
    x, y = source.replay((t, p) for _, t, p in Simulation(3).run(86400))
    assert len(x) > 200 and checked_data(tm.model, x, y, cfg.min_samples)[2] is None


def test_demo_model_names_all_have_settings():
    from fedmq.coordinator.demo.cli import MODELS
    from fedmq.coordinator.demo.federation import LEARNING_RATE

    assert sorted(MODELS) == sorted(LEARNING_RATE)


def test_tflite_example_builds_and_checks(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m.tflite"
    cmd = [sys.executable, "-m", "fedmq.shared.cli"]
    r = subprocess.run(
        cmd + ["coordinator", "build-model", os.path.join(EXAMPLES, "tflite-sensors.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "sha256" in r.stdout, r.stderr
    assert subprocess.run(cmd + ["model", "check", str(out)], capture_output=True).returncode == 0
