"""A checkpoint that cannot be written stops the coordinator before anything is announced; configuration and
checkpoint files that cannot be used end in exit 2 with the file named, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np

from fedhelp import FED, checkpoint_state, fedmq, start_nodes, stop, wait_for, write_federation
from fedmq.shared.messages import decode_metrics
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import BrokerSettings
from fedmq.shared.topics import Topics

FEDMQ = [sys.executable, "-m", "fedmq.shared.cli"]
SIX = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "b3"]}


def test_a_checkpoint_that_cannot_be_written_stops_before_the_round_is_announced(broker, tmp_path):
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=4, deadline_s=4, quorum=0.6)
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    ckpt = tmp_path / "ckpt"
    watcher = MqttLink("watch-metrics", BrokerSettings(port=broker.port), persistent=False)
    watcher.subscribe(Topics(FED).metrics())
    watcher.start()
    try:
        wait_for(lambda: "connected" in (tmp_path / "a1.log").read_text(), 20, "a1 to connect")
        nodes["a1"].send_signal(signal.SIGSTOP)  # every round now closes at its deadline
        coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
        wait_for(lambda: (checkpoint_state(ckpt) or {}).get("rounds_done", 0) >= 1, 40, "round 1's checkpoint")
        shutil.rmtree(ckpt)
        ckpt.write_text("a file where the checkpoint directory was")  # round 2 closes at its deadline, then saves
        assert coord.wait(60) == 2
    finally:
        nodes["a1"].send_signal(signal.SIGCONT)
        stop(list(nodes.values()))
    log = (tmp_path / "coord.log").read_text()
    assert "cannot write the checkpoint" in log and str(ckpt) in log and "Traceback" not in log
    rounds = []
    while (msg := watcher.get(timeout=0.5)) is not None:
        rounds.append(decode_metrics(msg.payload)["round"])
    watcher.stop()
    assert rounds and max(rounds) == 1, rounds  # round 2 was never announced


def test_configuration_files_that_cannot_be_used_exit_2_with_the_file_named(tmp_path):
    paths = write_federation(str(tmp_path), 1883, {"g": ["a"]}, rounds=1)
    with open(paths["topic_map"]) as fh:
        import yaml

        fed = yaml.safe_load(fh)
    cases = {
        "evaluation.path": lambda f: f["evaluation"].update(path=str(tmp_path / "missing.npz")),
        "broker.password_file": lambda f: f["broker"].update(username="u", password_file=str(tmp_path / "nopass")),
        "broker.tls.ca_file": lambda f: f["broker"].update(tls={"ca_file": str(tmp_path / "noca.crt")}),
        "checkpoint.dir": lambda f: f.update(checkpoint={"dir": str(tmp_path / "afile")}),
    }
    (tmp_path / "afile").write_text("x")
    for key, change in cases.items():
        bad = json.loads(json.dumps(fed))
        change(bad)
        path = tmp_path / f"bad-{key}.yaml"
        path.write_text(yaml.safe_dump(bad))
        for cmd in (["validate", str(path)], ["coordinator", "run", str(path)]):
            r = subprocess.run(FEDMQ + cmd, capture_output=True, text=True, timeout=60)
            assert r.returncode == 2 and key in r.stderr and "Traceback" not in r.stderr, (key, cmd, r.stderr)
    node = yaml.safe_load(open(paths["a"]))
    node["broker"].update(username="a", password_file=str(tmp_path / "nopass"))
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(node))
    for cmd in (["node", "check"], ["node", "run"]):
        r = subprocess.run(FEDMQ + cmd + [str(tmp_path / "node.yaml")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "broker.password_file" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_tree_hundreds_of_groups_deep_is_refused_not_a_recursion_error(tmp_path):
    lines = ["federation: f", "model: {kind: softmax_regression, features: 2, classes: [0, 1]}", "tree:",
             "  nodes: [n0]"]
    for i in range(400):  # tree: groups: g0: groups: g1: ...
        lines.append(" " * (2 + 4 * i) + "groups:")
        lines.append(" " * (4 + 4 * i) + f"g{i}:")
    path = tmp_path / "deep.yaml"
    path.write_text("\n".join(lines) + "\n")
    r = subprocess.run(FEDMQ + ["validate", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "deep" in r.stderr, r.stderr


def test_a_corrupted_state_file_stops_the_coordinator_with_exit_2(tmp_path):
    paths = write_federation(str(tmp_path), 1, {"g": ["a"]}, rounds=1)
    from fedmq.coordinator import checkpoint
    from fedmq.coordinator.checkpoint import RoundState
    from fedmq.shared.models import initial_weights
    from fedmq.shared.topicmap import ModelSpec

    spec = ModelSpec("softmax_regression", 8, (0, 1, 2))
    snapshot = checkpoint.save(str(tmp_path / "ckpt"), FED, spec, initial_weights(spec), RoundState(1, 1))
    for body in ("null", "[]", '{"federation": "testfed", "rounds_done": -1, "model_version": 1}'):
        with open(os.path.join(snapshot, "state.json"), "w") as fh:
            fh.write(body)
        r = subprocess.run(
            FEDMQ + ["coordinator", "run", paths["topic_map"]], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and "state.json" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_updates_of_huge_values_are_refused_and_the_model_stays_finite():
    import logging
    import time

    from fedmq.coordinator.group import GroupAggregator
    from fedmq.coordinator.rejections import Rejections
    from fedmq.coordinator.tree import Membership
    from fedmq.shared.envelope import Envelope, Kind, encode
    from fedmq.shared.messages import Control, TrainParams
    from fedmq.shared.models import initial_weights
    from fedmq.shared.topicmap import parse_topic_map

    tm = parse_topic_map(
        "federation: f\nmodel: {kind: softmax_regression, features: 3, classes: [0, 1]}\ntree: {nodes: [a, b]}\n"
    )
    rej = Rejections(logging.getLogger("test"))
    out = {}
    root = GroupAggregator(
        tm, tm.root, Membership(tm), lambda *a: None, rej, on_root_close=lambda c, r: out.update(r=r)
    )
    root.set_model(0, {k: v.astype(np.float64) for k, v in initial_weights(tm.model).items()})
    root.start(
        Control(
            "start",
            1,
            attempt=1,
            model_version=0,
            deadline_at=time.time() + 30,
            selected=["a", "b"],
            train=TrainParams(1, 8, 0.1),
        )
    )
    huge = {k: np.full(v.shape, 1e300, np.float64) for k, v in initial_weights(tm.model).items()}
    root.on_update("a", encode(Envelope(Kind.UPDATE, "f", 1, "a", 0, huge, samples=10, attempt=1)), "t/a")
    assert rej.total["values too large"] == 1
    fine = {k: np.ones(v.shape, np.float32) for k, v in initial_weights(tm.model).items()}
    root.on_update("b", encode(Envelope(Kind.UPDATE, "f", 1, "b", 0, fine, samples=10, attempt=1)), "t/b")
    root.tick(time.time() + 60)
    assert all(np.isfinite(v).all() for v in out["r"].sums.finish(None).values())


def test_an_edge_aggregator_killed_mid_round_counts_the_updates_its_session_kept(broker, tmp_path):
    """SIGKILL (not SIGSTOP: the process loses its memory) of an edge aggregator after it relayed a start;
    its nodes answer while it is dead, the broker keeps their updates in its session; restarted, it gets
    them before the retained start and must count them, not refuse them as stale."""
    import yaml

    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=2, deadline_s=20, edge=["home2"])
    for n in SIX["home2"]:  # the edge's nodes take 3 s to train: time to kill the edge after its start
        cfg = yaml.safe_load(open(paths[n]))
        cfg["simulate_delay_s"] = 3.0
        with open(paths[n], "w") as fh:
            yaml.safe_dump(cfg, fh)
    procs = list(start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path).values())
    edge_cmd = ["coordinator", "edge", paths["topic_map"], "--group", "home2"]
    edge = fedmq(edge_cmd, str(tmp_path / "edge.log"))
    from inprocess import InThreadCoordinator

    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: c.service.driver.root.current is not None, 30, "round 1")
            import time as _t

            _t.sleep(1.0)  # the edge has relayed the start; its nodes are training
            edge.kill()
            edge.wait()
            _t.sleep(4.0)  # they answer while it is dead: the broker keeps their updates in its session
            edge = fedmq(edge_cmd, str(tmp_path / "edge2.log"))
            wait_for(lambda: len(c.rounds) >= 2 or c.error is not None, 60, "two rounds")
            assert c.error is None, c.error
            assert c.rounds[0]["updates"] == 6, c.rounds[0]
    finally:
        stop(procs + [edge])
    # the restarted edge counted what its session kept (nodes that resend to it afterwards, because another
    # process relays the round now, find the round closed: those copies are refused as stale, as a replay is)
    log = (tmp_path / "edge2.log").read_text()
    assert "round 1: closing (all in) with 3 of 3 nodes" in log, log


def test_two_processes_with_one_node_id_are_named_on_both_sides_and_at_the_coordinator(broker, tmp_path):
    from inprocess import InThreadCoordinator

    paths = write_federation(str(tmp_path), broker.port, {"g": ["a", "b"]}, rounds=100_000, deadline_s=5, quorum=1)
    procs = [
        fedmq(["node", "run", paths["b"]], str(tmp_path / "b.log")),
        fedmq(["node", "run", paths["a"]], str(tmp_path / "a-first.log")),
        fedmq(["node", "run", paths["a"]], str(tmp_path / "a-second.log")),
    ]  # the same id, twice
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(
                lambda: all(
                    "two processes running with the same id" in (tmp_path / f).read_text()
                    for f in ("a-first.log", "a-second.log")
                ),
                60,
                "both copies to say it",
            )
            wait_for(lambda: "a" in c.service.presence.flap_logged, 60, "the coordinator to say it")
    finally:
        stop(procs)
