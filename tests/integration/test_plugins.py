"""Plug-ins: a distribution of its own (tests/plugin_example, installed by putting it on PYTHONPATH, where
Python finds its .dist-info) adds a data source, a trainer, a robust rule and a server optimizer through
entry points; a federation on a real Mosquitto uses all four, and the topic map's checks know their
parameters."""

import os
import subprocess
import sys

from fedhelp import fedmq, rewrite_yaml, start_nodes, stop, write_federation

PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugin_example")


def _installed(monkeypatch, tmp_path):
    """The plug-in on every child's path, noting its use in tmp_path/used.log."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([PLUGIN, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("FEDMQ_PLUGIN_LOG", str(tmp_path / "used.log"))


def test_a_plugged_in_source_trainer_rule_and_optimizer_run_a_federation(broker, tmp_path, monkeypatch):
    _installed(monkeypatch, tmp_path)
    groups = {"home1": ["a1", "a2"], "home2": ["b1", "b2"]}
    paths = write_federation(str(tmp_path), broker.port, groups, rounds=3,
                             extra={"strategy": {"aggregator": "coordinate_trim", "cut": 1,
                                                 "server_optimizer": "damped", "damping": 0.5}})
    for i, n in enumerate(["a1", "a2", "b1", "b2"]):
        rewrite_yaml(paths[n], lambda cfg, i=i: cfg.update(data={"kind": "blobs", "seed": i, "samples": 80},
                                                            trainer="noting"))
    check = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "node", "check", paths["a1"]],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    nodes = start_nodes(paths, list(paths.keys() - {"topic_map"}), tmp_path)
    coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
    try:
        assert coord.wait(60) == 0, (tmp_path / "coord.log").read_text()[-3000:]
    finally:
        stop([coord, *nodes.values()])
    used = (tmp_path / "used.log").read_text().split("\n")
    assert sum(line.startswith("rule cut=1 ") for line in used) == 3  # once a round, at the root
    assert sum(line.startswith("optimizer damping=0.5 ") for line in used) >= 3
    assert len({line.split()[-1] for line in used if line.startswith("trainer ")}) == 4  # in every node process
    assert any(line.startswith("source ") for line in used)
    assert "accuracy" in (tmp_path / "coord.log").read_text()


def test_a_plugged_in_rules_parameters_are_checked_like_built_in_ones(tmp_path, monkeypatch):
    _installed(monkeypatch, tmp_path)
    paths = write_federation(str(tmp_path), 1883, {"home1": ["a1"]},
                             extra={"strategy": {"aggregator": "coordinate_trim", "cut": 11}})
    out = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "validate", paths["topic_map"]],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "strategy.cut: must be at most 10" in out.stdout + out.stderr and "fed.yaml:" in out.stdout + out.stderr
    monkeypatch.delenv("PYTHONPATH")  # not installed: the rule is unknown, and the error lists what is
    out = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "validate", paths["topic_map"]],
                         capture_output=True, text=True)
    assert "strategy.aggregator: must be one of fedavg, krum, median, multi_krum, trimmed_mean, not " \
           "'coordinate_trim'" in out.stdout + out.stderr
