"""A real full disk (a small tmpfs, mounted for the test; skipped where mounting is not allowed) under the
coordinator's checkpoints, a node's model cache and the broker's persistence directory."""

from __future__ import annotations

import os
import subprocess
import uuid

import numpy as np
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


def test_a_snapshot_cut_off_by_a_full_disk_never_counts_as_the_one_before(tiny_fs):
    """Free space runs out at every step of a save in turn (after the snapshot's files, at its rename, at
    CURRENT): whatever step fails, the directory keeps only committed snapshots, and the next save's "one
    before" is the snapshot CURRENT named, not one that was renamed into place and never committed."""
    from fedmq.coordinator import checkpoint
    from fedmq.shared.topicmap import ModelSpec

    spec = ModelSpec(kind="softmax_regression", features=40, classes=(0, 1, 2))
    weights = {"coef": np.zeros((3, 40)), "intercept": np.zeros(3)}
    directory = str(tiny_fs / "ckpt")
    state = checkpoint.RoundState()
    failures = 0
    for free_pages in range(0, 8):
        state.rounds_done += 1
        state.model_version += 1
        committed = checkpoint.current_dir(directory) if os.path.isdir(directory) else None
        filler = fill(tiny_fs)
        with open(filler, "r+b") as fh:  # leave exactly this many pages free
            fh.truncate(max(0, os.path.getsize(filler) - free_pages * 4096))
        try:
            checkpoint.save(directory, "f", spec, weights, state)
        except checkpoint.CheckpointError:
            failures += 1
            assert checkpoint.current_dir(directory) == committed
        finally:
            os.unlink(filler)
        snapshots = {d for d in os.listdir(directory) if d.startswith("s")}
        current = os.path.basename(checkpoint.current_dir(directory) or "")
        assert current in snapshots or not snapshots
        assert len(snapshots) <= 2
        # what else is there was current before: its state file is complete and older than the current one
        for d in snapshots - {current}:
            assert os.path.exists(os.path.join(directory, d, "state.json")) and d < current
        checkpoint.save(directory, "f", spec, weights, state)  # room again: the next save succeeds
        previous = {d for d in os.listdir(directory) if d.startswith("s")} - {
            os.path.basename(checkpoint.current_dir(directory) or "")}
        assert previous <= ({current} if current else set()), (free_pages, previous, current)
    assert failures >= 2  # the loop did reach the failing steps
