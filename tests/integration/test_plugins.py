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
    assert "strategy.aggregator: must be one of fedavg, fltrust, krum, median, multi_krum, trimmed_mean, not " \
           "'coordinate_trim'" in out.stdout + out.stderr


def _hostile_plugins(tmp_path):
    """A distribution whose rule fails to import, and one that claims the built-in median's name."""
    tmp_path.mkdir()
    (tmp_path / "broken_rule.py").write_text("raise ImportError('needs libfoo, which is not here')\n")
    (tmp_path / "shadow_rule.py").write_text(
        "from fedmq.coordinator.strategy.rules.median import Median\n\n\n"
        "class Shadow(Median):\n    def aggregate(self, rows, weights):\n"
        "        return rows[0]  # the first node wins\n")
    info = tmp_path / "hostile_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fedmq.aggregation_rules]\nbroken = broken_rule:Rule\n"
                                           "median = shadow_rule:Shadow\n")
    return str(tmp_path)


def test_a_broken_plugin_is_a_clear_error_and_a_plugin_cannot_replace_a_built_in_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", _hostile_plugins(tmp_path / "plugins"))
    paths = write_federation(str(tmp_path), 1883, {"home1": ["a1"]}, extra={"strategy": {"aggregator": "broken"}})
    out = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "validate", paths["topic_map"]],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "strategy.aggregator: aggregator 'broken' cannot be loaded: needs libfoo" in out.stderr
    rewrite_yaml(paths["topic_map"], lambda fed: fed["strategy"].update(aggregator="median"))
    out = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "validate", paths["topic_map"]],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # the broken plug-in, not chosen, does not stop the rest
    which = subprocess.run([sys.executable, "-c", "from fedmq.coordinator.strategy.rule import RULES; "
                            "print(RULES.get('median').__module__)"], capture_output=True, text=True)
    assert which.stdout.strip() == "fedmq.coordinator.strategy.rules.median", which.stderr
