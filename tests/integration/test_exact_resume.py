"""A SIGKILL of any fedmq process, followed by a restart, ends in the same final model as a run without the
fault: sync FedAvg is deterministic here (a node's shuffling depends on the node, round and model only),
so a lost, doubled or differently retrained update would show as a different model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedhelp import checkpoint_file, checkpoint_state, fedmq, start_nodes, stop, wait_for, write_federation
from fedmq.shared.envelope import decode

SIX = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "b3"]}
ROUNDS = 5


def _rounds_done(tmp_path) -> int:
    return (checkpoint_state(tmp_path / "ckpt") or {}).get("rounds_done", 0)


def _federation(broker, tmp_path, fault=None):
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=ROUNDS, deadline_s=30, quorum=1.0,
                             edge=["home2"], extra_rounds={"on_quorum_failure": "retry", "max_retries": 20},
                             node_extra={"simulate_delay_s": 0.7})  # rounds last long enough to be cut
    names = [n for ns in SIX.values() for n in ns]
    procs = {"nodes": start_nodes(paths, names, tmp_path)}
    procs["edge"] = fedmq(["coordinator", "edge", paths["topic_map"], "--group", "home2"], str(tmp_path / "edge.log"))
    procs["coord"] = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
    try:
        if fault is not None:
            wait_for(lambda: _rounds_done(tmp_path) >= 2, 60, "two rounds")
            fault(procs, paths, tmp_path, broker)
            assert _rounds_done(tmp_path) < ROUNDS, "the fault came after the federation had finished"
        wait_for(lambda: procs["coord"].poll() is not None, 120, "the federation to finish")
        assert procs["coord"].returncode == 0, (tmp_path / "coord.log").read_text()[-3000:]
    finally:
        stop([procs["coord"], procs["edge"], *procs["nodes"].values()])
    assert _rounds_done(tmp_path) == ROUNDS
    with open(checkpoint_file(tmp_path / "ckpt", "model.fmq"), "rb") as fh:
        return {k: np.array(v) for k, v in decode(fh.read()).tensors.items()}


def _kill_coordinator(procs, paths, tmp_path, broker):
    procs["coord"].kill()
    procs["coord"].wait()
    procs["coord"] = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord2.log"))


def _kill_node(procs, paths, tmp_path, broker):
    procs["nodes"]["a2"].kill()
    procs["nodes"]["a2"].wait()
    time.sleep(0.5)
    procs["nodes"]["a2"] = fedmq(["node", "run", paths["a2"]], str(tmp_path / "a2-again.log"))


def _kill_edge(procs, paths, tmp_path, broker):
    procs["edge"].kill()
    procs["edge"].wait()
    time.sleep(0.5)
    procs["edge"] = fedmq(["coordinator", "edge", paths["topic_map"], "--group", "home2"], str(tmp_path / "edge2.log"))


def _kill_broker(procs, paths, tmp_path, broker):
    broker.process.restart(hard=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from conftest import _local

    tmp = tmp_path_factory.mktemp("reference")
    gen = _local(tmp)
    broker = next(gen)
    try:
        return _federation(broker, tmp)
    finally:
        gen.close()


EVIDENCE = {"_kill_coordinator": ("coord2.log", "resuming from checkpoint"),
            "_kill_node": ("a2-again.log", "update sent"),
            "_kill_edge": ("edge2.log", "closing (all in) with 3 of 3 nodes"),
            "_kill_broker": ("coord.log", "reconnected: republishing")}


@pytest.mark.parametrize("fault", [_kill_coordinator, _kill_node, _kill_edge, _kill_broker],
                         ids=["coordinator", "node", "edge", "broker"])
def test_sigkill_and_restart_end_in_the_same_model(local_broker, tmp_path, reference, fault):
    got = _federation(local_broker, tmp_path, fault)
    log, line = EVIDENCE[fault.__name__]
    assert line in (tmp_path / log).read_text()  # the restarted process did take part
    for k in reference:
        np.testing.assert_array_equal(got[k], reference[k], err_msg=f"{fault.__name__}: tensor {k}")
