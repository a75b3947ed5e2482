"""Offline gateway bundles: build one, install it with the network denied, and see its node join a round;
build the ARM bundles and check that their wheel sets are complete."""

import json
import os
import platform
import subprocess
import sys
import tarfile

import pytest

from fedhelp import fedmq, stop, wait_for, write_federation
from inprocess import InThreadCoordinator

GROUPS = {"home1": ["a1", "a2"], "home2": ["b1"]}
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
NO_NETWORK = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_INDEX": "1", "http_proxy": "http://127.0.0.1:9",
              "https_proxy": "http://127.0.0.1:9"}


def extract(bundle, dest):
    with tarfile.open(bundle) as tar:  # the "data" filter where this Python has it (3.11.4+)
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def build(config, plat, out, *extra):
    r = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "node", "bundle", config, "--platform", plat,
                        "--python", PY, "--out", out, *extra], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def manifest(bundle):
    with tarfile.open(bundle) as tar:
        name = next(m for m in tar.getnames() if m.endswith("MANIFEST.json"))
        return json.load(tar.extractfile(name))


@pytest.mark.slow
def test_bundle_installs_offline_and_its_node_joins_a_round(broker, tmp_path):
    machine = platform.machine()
    if machine not in ("x86_64", "aarch64"):
        pytest.skip(f"no bundle test for {machine}")
    paths = write_federation(str(tmp_path), broker.port, GROUPS, rounds=2)
    bundle = str(tmp_path / "a1.tar.gz")
    build(paths["a1"], machine, bundle)
    extract(bundle, tmp_path / "gateway")
    prefix = tmp_path / "opt-fedmq"
    env = {**os.environ, **NO_NETWORK, "FEDMQ_PREFIX": str(prefix), "FEDMQ_NO_SYSTEMD": "1",
           "FEDMQ_PYTHON": getattr(sys, "_base_executable", sys.executable)}
    r = subprocess.run(["sh", str(tmp_path / "gateway" / "fedmq-node-a1" / "install.sh")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "installed; start the node with" in r.stdout
    node_py = str(prefix / "venv" / "bin" / "python")
    probe = subprocess.run([node_py, "-c", "import fedmq.node, fedmq.shared; import fedmq.coordinator"],
                           capture_output=True, text=True)
    assert "No module named 'fedmq.coordinator'" in probe.stderr  # a gateway gets the node only
    log = str(tmp_path / "a1.log")
    installed = subprocess.Popen([str(prefix / "venv" / "bin" / "fedmq"), "node", "run",
                                  str(prefix / "config" / "node.yaml")], stdout=open(log, "wb"),
                                 stderr=subprocess.STDOUT, start_new_session=True)
    others = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for n in ("a2", "b1")]
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 2 or c.error, 60, "two rounds")
            assert c.error is None
            assert [r["updates"] for r in c.rounds] == [3, 3]
    finally:
        stop([installed, *others])
    assert "round 2: trained" in open(log).read()


@pytest.mark.slow
@pytest.mark.parametrize("plat", ["aarch64", "armv7l"])
def test_arm_bundles_have_complete_wheel_sets(tmp_path, plat):
    paths = write_federation(str(tmp_path), 1883, GROUPS, rounds=1)
    bundle = str(tmp_path / f"a1-{plat}.tar.gz")
    out = build(paths["a1"], plat, bundle, "--with", "tflite,secure")
    m = manifest(bundle)
    wheels = " ".join(m["wheels"])
    assert "fedmq_node-" in wheels and "fedmq_shared-" in wheels and "paho_mqtt-" in wheels
    assert "cryptography-" in wheels
    if plat == "aarch64":
        assert "ai_edge_litert-" in wheels and "numpy-" in wheels and m["system_packages"] == []
        extract(bundle, tmp_path / "x")
        wheel_dir = tmp_path / "x" / "fedmq-node-a1" / "wheels"
        # Resolve the whole install for the target from the bundle alone.
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
                            "--find-links", str(wheel_dir), "--only-binary=:all:", "--python-version", PY,
                            "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
                            "--platform", "manylinux_2_27_aarch64", "--target", str(tmp_path / "t"),
                            "fedmq-node[tflite,secure]"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    else:  # no numpy, PyYAML or cffi wheels on PyPI for 32-bit ARM: the distribution's packages, said aloud
        assert "tflite_runtime-" in wheels and "armv7l" in wheels and "numpy-" not in wheels
        assert m["system_packages"] == ["python3-cffi", "python3-numpy", "python3-yaml"]
        assert "apt-get install python3-cffi python3-numpy python3-yaml" in out
