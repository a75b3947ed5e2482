"""Whole federations over a real Mosquitto: coordinator, node processes, hierarchy, faults, bad input."""

import json
import os
import signal

import numpy as np
import pytest

from fedhelp import checkpoint_file, checkpoint_state, fedmq, start_nodes, stop, wait_for, wait_online, write_federation
from fedmq.coordinator.strategy.privacy import Accountant
from fedmq.shared.models import initial_weights
from fedmq.shared.topicmap import Privacy, load_topic_map
from inprocess import InThreadCoordinator, RogueNode

SIX = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "b3"]}


def test_three_rounds_six_nodes_two_groups(broker, tmp_path):
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=3)
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    report = tmp_path / "report.json"
    coord = fedmq(["coordinator", "run", paths["topic_map"], "--report", str(report)], str(tmp_path / "coord.log"))
    try:
        assert coord.wait(60) == 0, (tmp_path / "coord.log").read_text()
    finally:
        stop([coord, *nodes.values()])
    rounds = json.loads(report.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["updates"] == 6 and r["selected"] == 6 for r in rounds)
    assert rounds[-1]["accuracy"] > 0.9
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in rounds)
    state = checkpoint_state(tmp_path / "ckpt")
    assert state["rounds_done"] == 3 and state["model_version"] == 3


def test_node_killed_and_node_frozen_mid_round_close_at_quorum(broker, tmp_path):
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=2, deadline_s=4, quorum=0.6)
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    wait_online(broker.port, {"a2": ("home1",), "b3": ("home2",)})  # their retained "online" is on the broker
    for n in ("a2", "b3"):
        nodes[n].send_signal(signal.SIGSTOP)  # frozen: still looks online, never answers
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            driver = c.service.driver
            wait_for(lambda: driver.root.current is not None, 20, "round 1 to start")
            assert len(driver.selected) == 6
            nodes["b3"].kill()  # gone mid-round: its last will marks it offline
            wait_for(lambda: len(c.rounds) >= 1, 15, "round 1 to close at quorum")
            assert c.rounds[0]["updates"] == 4 and c.rounds[0]["selected"] == 6
            assert c.rounds[0]["seconds"] > 3.0  # waited for the frozen node until the deadline
            assert c.service.presence.state["b3"] == "offline"
            wait_for(lambda: len(c.rounds) >= 2, 15, "round 2")
            assert c.rounds[1]["selected"] == 5 and c.rounds[1]["updates"] == 4  # b3 is no longer selected
            assert c.error is None
    finally:
        nodes["a2"].send_signal(signal.SIGCONT)
        stop(list(nodes.values()))


def test_bad_updates_are_rejected_and_the_round_completes(broker, tmp_path):
    groups = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "rogue"]}
    paths = write_federation(str(tmp_path), broker.port, groups, rounds=2, deadline_s=6)
    rogue = RogueNode(broker.port, "rogue", ("home2",))
    nodes = start_nodes(paths, ["a1", "a2", "a3", "b1", "b2"], tmp_path)
    tm = load_topic_map(paths["topic_map"])
    good = initial_weights(tm.model)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            ctl = rogue.wait_start()

            def update(**kw):
                return rogue.update(ctl, good, **kw)

            rogue.send(update(tensors={"coef": np.zeros((3, 7), np.float32), "intercept": np.zeros(3, np.float32)}))
            rogue.send(
                update(tensors={"coef": np.full((3, 8), np.nan, np.float32), "intercept": np.zeros(3, np.float32)})
            )
            corrupt = bytearray(update())
            corrupt[30] ^= 0x40
            rogue.send(bytes(corrupt))
            rogue.send(update(round=ctl.round + 5))
            rogue.send(b"\x00garbage")
            wait_for(lambda: sum(c.service.rejections.total.values()) >= 5, 10, "the five rejections")
            rogue.send(update())  # finally a good one
            wait_for(lambda: len(c.rounds) >= 1, 15, "round 1")
            assert c.rounds[0]["updates"] == 6
            rejected = c.rounds[0]["rejected"]
            assert rejected == {
                "wrong shape or dtype": 1,
                "NaN or Inf": 1,
                "bad checksum": 1,
                "stale round": 1,
                "malformed": 1,
            }, rejected
            # a straggler for a closed round is rejected too, and never mixed into the next one
            rogue.send(update())
            wait_for(lambda: c.service.rejections.total["stale round"] >= 2, 10, "the stale straggler")
            assert c.error is None
    finally:
        rogue.link.stop()
        stop(list(nodes.values()))


def test_edge_process_aggregates_its_group(broker, tmp_path):
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=3, edge=["home2"], root_nodes=["r1"])
    procs = list(start_nodes(paths, ["a1", "a2", "a3", "b1", "b2", "b3", "r1"], tmp_path).values())
    procs.append(fedmq(["coordinator", "edge", paths["topic_map"], "--group", "home2"], str(tmp_path / "edge.log")))
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 3, 60, "three rounds")
            assert all(r["updates"] == 7 for r in c.rounds)
            assert ("home2",) not in c.service.groups  # served by the edge process only
    finally:
        stop(procs)
    assert "closing (all in) with 3 of 3 nodes" in (tmp_path / "edge.log").read_text()


ADAM_DP = {
    "server_optimizer": "fedadam",
    "server_lr": 0.1,
    "privacy": {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1.0e-5},
}


@pytest.mark.parametrize("strategy", [None, ADAM_DP], ids=["fedavg", "fedadam-dp"])
def test_coordinator_killed_resumes_from_last_checkpoint(broker, tmp_path, strategy):
    """A restarted coordinator goes on from the last applied round: the model, and with FedAdam and DP
    the optimizer's moments and the privacy budget already spent (epsilon never starts again from 0)."""
    paths = write_federation(
        str(tmp_path), broker.port, SIX, rounds=6, extra={"strategy": strategy} if strategy else None
    )
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    ckpt = tmp_path / "ckpt"
    try:
        first = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "c1.log"))
        wait_for(lambda: (checkpoint_state(ckpt) or {}).get("rounds_done", 0) >= 2, 30, "two rounds")
        first.kill()
        first.wait()
        done = checkpoint_state(ckpt)["rounds_done"]
        report = tmp_path / "r2.json"
        second = fedmq(["coordinator", "run", paths["topic_map"], "--report", str(report)], str(tmp_path / "c2.log"))
        assert second.wait(60) == 0, (tmp_path / "c2.log").read_text()
    finally:
        stop(list(nodes.values()))
    resumed = [r["round"] for r in json.loads(report.read_text())["rounds"]]
    assert resumed == list(range(done + 1, 7))
    final = checkpoint_state(ckpt)
    assert final["rounds_done"] == 6 and [h["round"] for h in final["history"]] == [1, 2, 3, 4, 5, 6]
    assert "resuming from checkpoint" in (tmp_path / "c2.log").read_text()
    if strategy:
        assert final["optimizer"] and os.path.exists(checkpoint_file(ckpt, "optimizer.fmq"))
        assert final["dp_events"] == [[1.0, 1.0]] * 6  # every node in every round, noise multiplier 1
        eps = [h["epsilon"] for h in final["history"]]
        assert all(a < b for a, b in zip(eps, eps[1:])), eps  # the budget grows across the restart
        whole = Accountant(Privacy(**ADAM_DP["privacy"]))
        for _ in range(6):
            spent = whole.compose([1.0, 1.0])
        assert eps[-1] == pytest.approx(spent, abs=1e-4)  # as if the coordinator had never stopped


@pytest.mark.parametrize("kind", ["sgd_classifier", "mlp_classifier", "mlp"])
def test_other_model_kinds_train_over_mqtt(broker, tmp_path, kind):
    paths = write_federation(str(tmp_path), broker.port, {"g": ["n1", "n2"]}, rounds=2, checkpoint=False)
    text = open(paths["topic_map"]).read().replace("kind: softmax_regression", f"kind: {kind}")
    if kind != "sgd_classifier":
        text = text.replace("features: 8", "features: 8\n  hidden: [6]")
    open(paths["topic_map"], "w").write(text)
    nodes = start_nodes(paths, ["n1", "n2"], tmp_path)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 2, 60, "two rounds")
            assert all(r["updates"] == 2 for r in c.rounds) and c.rounds[-1]["accuracy"] > 0.6
    finally:
        stop(list(nodes.values()))
    assert os.path.exists(paths["topic_map"])


def test_broker_restart_nodes_and_coordinator_reconnect(local_broker, tmp_path):
    paths = write_federation(
        str(tmp_path), local_broker.port, SIX, rounds=4, deadline_s=5, quorum=0.6, extra_rounds={"max_retries": 5}
    )
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 1, 30, "round 1")
            local_broker.process.restart()  # SIGTERM, persistence saved, same port
            wait_for(lambda: len(c.rounds) >= 4, 90, "all rounds after the broker restart")
            assert c.error is None
            assert c.service.link.connects >= 2
    finally:
        stop(list(nodes.values()))
    logs = [(tmp_path / f"{n}.log").read_text() for ns in SIX.values() for n in ns]
    assert sum("lost the broker" in text for text in logs) == 6


def test_quorum_failure_stops_with_a_clear_message(broker, tmp_path):
    paths = write_federation(
        str(tmp_path),
        broker.port,
        {"g": ["n1", "n2"]},
        rounds=2,
        deadline_s=2,
        quorum=2,
        extra_rounds={"on_quorum_failure": "stop"},
    )
    nodes = start_nodes(paths, ["n1", "n2"], tmp_path)
    wait_online(broker.port, {"n1": ("g",), "n2": ("g",)})  # selected, then frozen: the round misses its quorum
    nodes["n2"].send_signal(signal.SIGSTOP)
    try:
        coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
        assert coord.wait(30) == 1
    finally:
        nodes["n2"].send_signal(signal.SIGCONT)
        stop(list(nodes.values()))
    log = (tmp_path / "coord.log").read_text()
    assert "quorum not met (1 of 2 needed)" in log and "Traceback" not in log


def test_nodes_that_exit_when_done_do_so_after_the_last_round(broker, tmp_path):
    """The root's "done" reaches nodes of groups the coordinator serves itself, although it exits at once."""
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=2)
    names = [n for ns in SIX.values() for n in ns]
    nodes = {n: fedmq(["node", "run", paths[n], "--exit-when-done"], str(tmp_path / f"{n}.log")) for n in names}
    coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
    try:
        assert coord.wait(60) == 0, (tmp_path / "coord.log").read_text()
        assert [nodes[n].wait(15) for n in names] == [0] * len(names)
    finally:
        stop([coord, *nodes.values()])
    assert all("federation finished after round 2" in (tmp_path / f"{n}.log").read_text() for n in names)
