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
