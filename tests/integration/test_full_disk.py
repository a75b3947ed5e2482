"""A real full disk (a small tmpfs, mounted for the test; skipped where mounting is not allowed) under the
coordinator's checkpoints, a node's model cache and the broker's persistence directory."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import yaml

from fedhelp import TWO_HOMES as GROUPS
from fedhelp import checkpoint_state, fedmq, stop, tflite_federation, wait_for, write_federation
from fedmq.broker.process import MosquittoProcess

SIX = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "b3"]}


@pytest.fixture
def tiny_fs(tmp_path):
    """A 512 KiB tmpfs: fill it with ``fill(path)`` to make the next write fail with ENOSPC."""
    path = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(fs) -> str:
    """Take every free byte of ``fs``; returns the filler's path (remove it to free the space)."""
    filler = os.path.join(fs, "filler")
    try:
        with open(filler, "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 4096)
    except OSError:  # ENOSPC: the disk is full
        pass
    return filler


def test_a_full_disk_under_the_checkpoints_stops_the_coordinator_and_a_restart_resumes(broker, tmp_path, tiny_fs):
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=4, deadline_s=10)
    fed = yaml.safe_load(open(paths["topic_map"]))
    fed["checkpoint"] = {"dir": str(tiny_fs / "ckpt")}
    yaml.safe_dump(fed, open(paths["topic_map"], "w"))
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in SIX.values() for n in ns]
    try:
        coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "c1.log"))
        wait_for(lambda: (checkpoint_state(tiny_fs / "ckpt") or {}).get("rounds_done", 0) >= 1, 30, "a checkpoint")
        filler = fill(tiny_fs)
        assert coord.wait(60) == 2
        log = (tmp_path / "c1.log").read_text()
        assert "No space left on device" in log and "stopped before announcing" in log and "Traceback" not in log
        assert not [f for f in os.listdir(tiny_fs / "ckpt") if f.startswith(".new-") or ".tmp." in f]
        done = checkpoint_state(tiny_fs / "ckpt")["rounds_done"]
        os.unlink(filler)
        coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "c2.log"))
        assert coord.wait(60) == 0, (tmp_path / "c2.log").read_text()
    finally:
        stop(nodes)
    assert f"resuming from checkpoint {tiny_fs / 'ckpt'}: {done} rounds done" in (tmp_path / "c2.log").read_text()
    assert checkpoint_state(tiny_fs / "ckpt")["rounds_done"] == 4


def test_a_full_disk_under_a_nodes_model_cache_costs_the_cache_and_saved_model_not_the_round(broker, tmp_path, tiny_fs):
    paths = tflite_federation(tmp_path, broker.port, "tflite", rounds=2)
    cache = tiny_fs / "cache"
    cache.mkdir()
    fill(tiny_fs)
    cfg = yaml.safe_load(open(paths["a1"]))
    cfg["cache_dir"] = str(cache)
    yaml.safe_dump(cfg, open(paths["a1"], "w"))
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
    coord = fedmq(["coordinator", "run", paths["topic_map"], "--fresh", "--report", str(tmp_path / "r.json")],
                  str(tmp_path / "coord.log"))
    try:
        assert coord.wait(90) == 0, (tmp_path / "coord.log").read_text()
    finally:
        stop(nodes)
    log = (tmp_path / "a1.log").read_text()
    assert "cannot cache the model file" in log and "No space left on device" in log and "update sent" in log
    assert "cannot save the global model" in log and "served from memory" in log  # its saved copy too
    assert not [f for f in os.listdir(cache) if ".tmp." in f]
    import json

    assert all(r["updates"] == 4 for r in json.loads((tmp_path / "r.json").read_text())["rounds"])


def test_a_full_disk_under_the_brokers_persistence_loses_no_round(tmp_path, tiny_fs):
    broker = MosquittoProcess(str(tmp_path / "mosquitto"))
    broker.config.persistence_dir = str(tiny_fs)  # its config and log stay on the roomy disk
    broker.start()
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=4, deadline_s=10,
                             extra_rounds={"on_quorum_failure": "retry", "max_retries": 10})
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in SIX.values() for n in ns]
    try:
        coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
        wait_for(lambda: (checkpoint_state(tmp_path / "ckpt") or {}).get("rounds_done", 0) >= 1, 30, "round 1")
        fill(tiny_fs)
        broker.restart()  # SIGTERM: Mosquitto cannot save its persistence file, and starts without it
        assert coord.wait(90) == 0, (tmp_path / "coord.log").read_text()[-3000:]
    finally:
        stop(nodes)
        broker.stop()
    assert checkpoint_state(tmp_path / "ckpt")["rounds_done"] == 4
