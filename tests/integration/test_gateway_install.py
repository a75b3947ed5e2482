"""A gateway that installs only fedmq-shared and fedmq-node, in a fresh virtual environment."""

import os
import subprocess
import sys
import venv

import pytest
import yaml

from fedhelp import stop, wait_for, write_federation
from inprocess import InThreadCoordinator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def gateway_venv(tmp_path_factory):
    d = tmp_path_factory.mktemp("gateway") / "venv"
    venv.EnvBuilder(with_pip=True).create(d)
    py = str(d / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", os.path.join(ROOT, "shared"), os.path.join(ROOT, "node")],
                   check=True, timeout=600)
    return d


@pytest.mark.slow
def test_gateway_has_node_but_no_coordinator_and_no_sklearn(gateway_venv):
    py = str(gateway_venv / "bin" / "python")
    fedmq = str(gateway_venv / "bin" / "fedmq")
    out = subprocess.run([fedmq, "--help"], capture_output=True, text=True, check=True).stdout
    assert "node" in out and "validate" in out and "coordinator" not in out and "demo" not in out
    assert subprocess.run([fedmq, "node", "run", "--help"], capture_output=True).returncode == 0
    for mod in ("fedmq.coordinator", "fedmq.broker", "sklearn"):
        r = subprocess.run([py, "-c", f"import {mod}"], capture_output=True, text=True)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, mod
    freeze = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True).stdout.lower()
    assert "scikit-learn" not in freeze and "matplotlib" not in freeze


@pytest.mark.slow
def test_gateway_node_joins_a_round_and_explains_missing_sklearn(gateway_venv, broker, tmp_path):
    paths = write_federation(str(tmp_path), broker.port, {"g": ["gw1"]}, rounds=1, checkpoint=False)
    node = subprocess.Popen([str(gateway_venv / "bin" / "fedmq"), "node", "run", paths["gw1"]],
                            stdout=open(tmp_path / "gw1.log", "wb"), stderr=subprocess.STDOUT)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 1, 30, "a round with the gateway node")
            assert c.rounds[0]["updates"] == 1
    finally:
        stop([node])
    # the same node asked to train a scikit-learn model says what to install
    cfg = yaml.safe_load(open(paths["gw1"]))
    cfg["trainer"] = "sklearn"
    yaml.safe_dump(cfg, open(paths["gw1"], "w"))
    probe = subprocess.run([str(gateway_venv / "bin" / "python"), "-c",
                            "from fedmq.node.trainers import make_trainer\n"
                            "from fedmq.shared.topicmap import ModelSpec\n"
                            "make_trainer('sklearn', ModelSpec('sgd_classifier', 4, (0, 1)))"],
                           capture_output=True, text=True)
    assert "pip install 'fedmq-node[sklearn]'" in probe.stderr
    # a gateway exports npz; asked for tflite it says where that exporter comes from
    model = str(tmp_path / ".fedmq-cache" / "global-model-gw1.fmq")
    assert os.path.exists(model), os.listdir(tmp_path)
    r = subprocess.run([str(gateway_venv / "bin" / "fedmq"), "model", "export", model, "--format", "tflite", "-o",
                        str(tmp_path / "m.tflite")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "pip install 'fedmq-coordinator[tflite]'" in r.stderr, r.stderr
    assert sys.executable  # the test venv itself is untouched


@pytest.mark.slow
def test_a_gateway_without_the_secure_extra_is_told_before_it_runs(gateway_venv, tmp_path):
    """Signatures need the cryptography package (fedmq-node[secure]): 'node check' and 'node run' both say
    so, with the pip command, instead of a traceback at the first signed message."""
    paths = write_federation(str(tmp_path), 1883, {"g": ["gw1"]}, rounds=1, checkpoint=False)
    (tmp_path / "keys.json").write_text("{}")
    (tmp_path / "gw1.sign").write_text("not read")
    cfg = yaml.safe_load(open(paths["gw1"]))
    cfg["security"] = {"keys": str(tmp_path / "keys.json"), "signing_key": str(tmp_path / "gw1.sign")}
    yaml.safe_dump(cfg, open(paths["gw1"], "w"))
    fedmq = str(gateway_venv / "bin" / "fedmq")
    for command in ("check", "run"):
        r = subprocess.run([fedmq, "node", command, paths["gw1"]], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert "pip install 'fedmq-node[secure]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
