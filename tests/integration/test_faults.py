"""Faults against real Mosquitto processes: broker restarts, coordinator and node crashes, stragglers,
an edge aggregator losing its uplink, and a flapping link."""

import signal
import threading
import time

import pytest

from faultproxy import FaultProxy
from fedhelp import FED, checkpoint_state, fedmq, start_nodes, stop, wait_for, wait_online, write_federation
from fedmq.shared.envelope import Envelope, Kind, encode
from fedmq.shared.models import initial_weights
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import BrokerSettings, load_topic_map
from fedmq.shared.topics import Topics
from inprocess import InThreadCoordinator

SIX = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "b3"]}
TEN = {"home1": ["a1", "a2", "a3", "a4", "a5"], "home2": ["b1", "b2", "b3", "b4", "b5"]}


def freeze_when_connected(nodes, names, port):
    """SIGSTOP nodes once the broker holds their 'online' status (not at their 'connected' log line, which
    comes before the status: a node frozen in between is never selected)."""
    groups = {n: (g,) for g, ns in {**SIX, **TEN}.items() for n in ns}
    wait_online(port, {n: groups[n] for n in names})
    for n in names:
        nodes[n].send_signal(signal.SIGSTOP)


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_broker_restart_mid_round(local_broker, tmp_path, hard):
    paths = write_federation(str(tmp_path), local_broker.port, SIX, rounds=3, deadline_s=5, quorum=0.6,
                             extra_rounds={"max_retries": 5})
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    freeze_when_connected(nodes, ["a1"], local_broker.port)  # every round now waits for its deadline
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: c.service.driver.root.current is not None, 20, "round 1 to start")
            time.sleep(1.0)  # the other five have answered; the round is open
            local_broker.process.restart(hard=hard)
            wait_for(lambda: len(c.rounds) >= 3, 60, "all rounds after the broker restart")
            assert c.error is None
            assert [r["updates"] for r in c.rounds] == [5, 5, 5]  # nothing lost, nothing counted twice
            assert [r["round"] for r in c.rounds] == [1, 2, 3]
    finally:
        nodes["a1"].send_signal(signal.SIGCONT)
        stop(list(nodes.values()))


def test_coordinator_sigkill_mid_round_resumes_without_gap_or_repeat(broker, tmp_path):
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=4, deadline_s=3, quorum=0.6)
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    freeze_when_connected(nodes, ["b3"], broker.port)
    try:
        first = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "c1.log"))
        wait_for(lambda: (checkpoint_state(tmp_path / "ckpt") or {}).get("rounds_done", 0) >= 1, 30, "round 1")
        time.sleep(1.0)  # round 2 is open, waiting for b3
        first.kill()
        first.wait()
        second = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "c2.log"))
        assert second.wait(60) == 0, (tmp_path / "c2.log").read_text()
    finally:
        nodes["b3"].send_signal(signal.SIGCONT)
        stop(list(nodes.values()))
    history = checkpoint_state(tmp_path / "ckpt")["history"]
    assert [h["round"] for h in history] == [1, 2, 3, 4]
    assert [h["model_version"] for h in history] == [1, 2, 3, 4]
    assert "resuming from checkpoint" in (tmp_path / "c2.log").read_text()


def test_thirty_percent_of_nodes_killed_mid_round(broker, tmp_path):
    # more rounds than can run before the victims are back, however slowly they start
    paths = write_federation(str(tmp_path), broker.port, TEN, rounds=100000, deadline_s=4, quorum=0.6)
    victims = ["a1", "a2", "b1"]
    nodes = start_nodes(paths, [n for ns in TEN.values() for n in ns], tmp_path)
    freeze_when_connected(nodes, victims, broker.port)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            c.wait(lambda: c.service.driver.root.current is not None, 20, "round 1 to start")
            assert len(c.service.driver.selected) == 10
            for n in victims:
                nodes[n].kill()  # SIGKILL mid-round: the last wills fire
            c.wait(lambda: all(c.service.presence.state.get(n) == "offline" for n in victims), 10, "the wills")
            c.wait(lambda: len(c.rounds) >= 1, 15, "round 1 to close at quorum")
            assert c.rounds[0]["updates"] == 7 and c.rounds[0]["seconds"] > 3  # closed by its deadline
            for n in victims:  # they come back
                nodes[n] = fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}-again.log"))
            c.wait(lambda: all(c.service.presence.state.get(n) == "online" for n in victims), 20, "their return")
            back = len(c.rounds)
            c.wait(lambda: len(c.rounds) >= back + 2, 20, "two more rounds")
            # accepted, so trained on the current model version (an update for another version is refused)
            assert c.rounds[back + 1]["updates"] == 10 and c.rounds[back + 1]["selected"] == 10
            assert c.service.rejections.total["wrong model version"] == 0
            assert c.error is None
    finally:
        stop(list(nodes.values()))
    assert "update sent" in (tmp_path / "a1-again.log").read_text()
    for log in tmp_path.glob("*.log"):  # ten nodes share one cache directory: each keeps its own model copy
        assert "cannot save" not in log.read_text(), log


def test_stragglers_skip_or_are_rejected(broker, tmp_path):
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=3, deadline_s=3, quorum=0.6)
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    freeze_when_connected(nodes, ["a3"], broker.port)
    tm = load_topic_map(paths["topic_map"])
    late = MqttLink("late-sender", BrokerSettings(port=broker.port))
    late.start()
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 1, 20, "round 1 to close without a3")
            first = c.service.driver.state.history[0]
            nodes["a3"].send_signal(signal.SIGCONT)  # wakes up after round 1 closed
            # a straggling update for the closed round 1, as a slow device would send it
            late.publish(Topics(FED).update(("home1",), "a3"), encode(Envelope(
                Kind.UPDATE, FED, 1, "a3", 0, initial_weights(tm.model), samples=60)))
            wait_for(lambda: len(c.rounds) >= 3, 30, "the remaining rounds")
            wait_for(lambda: c.service.rejections.total["stale round"] >= 1, 10, "the straggler's rejection")
            assert first["updates"] == 5 and c.rounds[0]["updates"] == 5
            assert all(r["updates"] <= 6 for r in c.rounds)  # never mixed into a later round
    finally:
        nodes["a3"].send_signal(signal.SIGCONT)
        stop(list(nodes.values()))
        late.stop()
    log = (tmp_path / "a3.log").read_text()
    assert "round 1: trained" not in log  # the node never trains on a round whose deadline has passed


@pytest.mark.parametrize("fault", ["process-stopped", "uplink-cut"])
def test_edge_aggregator_loses_its_uplink(broker, tmp_path, fault):
    proxy = FaultProxy("127.0.0.1", broker.port)
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=3, deadline_s=15, edge=["home2"])
    edge_map = tmp_path / "edge.yaml"
    edge_map.write_text(open(paths["topic_map"]).read().replace(f"port: {broker.port}", f"port: {proxy.port}"))
    procs = list(start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path).values())
    edge = fedmq(["coordinator", "edge", str(edge_map), "--group", "home2"], str(tmp_path / "edge.log"))
    procs.append(edge)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 1, 30, "round 1")
            if fault == "process-stopped":
                edge.send_signal(signal.SIGSTOP)
            else:
                proxy.block()
            time.sleep(3)
            if fault == "process-stopped":
                edge.send_signal(signal.SIGCONT)
            else:
                proxy.unblock()
            wait_for(lambda: len(c.rounds) >= 3, 45, "the rounds after the outage")
            assert [r["updates"] for r in c.rounds] == [6, 6, 6]  # the edge's partials all arrived
            assert max(r["seconds"] for r in c.rounds[1:]) > 2.5  # the root waited for it, as quorum 1.0 says
    finally:
        edge.send_signal(signal.SIGCONT)
        stop(procs)
        proxy.close()


def test_flapping_node_link_still_completes_rounds(broker, tmp_path):
    proxy = FaultProxy("127.0.0.1", broker.port)
    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=100000, deadline_s=10)
    cfg = open(paths["b1"]).read().replace(f"port: {broker.port}", f"port: {proxy.port}")
    open(paths["b1"], "w").write(cfg)
    nodes = start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path)
    stop_flapping = threading.Event()
    b1_log = tmp_path / "b1.log"

    def flap():
        while not stop_flapping.wait(0.7):
            proxy.cut()

    def b1_kept_going() -> bool:
        log = b1_log.read_text()
        return log.count("connected to") >= 3 and log.count("update sent") >= 5

    try:
        wait_for(lambda: "connected" in b1_log.read_text(), 20, "b1 to connect")
        threading.Thread(target=flap, daemon=True).start()
        with InThreadCoordinator(paths["topic_map"]) as c:
            # the rounds go on for as long as it takes b1 to reconnect three times and answer five rounds
            c.wait(b1_kept_going, 180, "b1 to reconnect 3 times and send 5 updates over the flapping link")
            # every selected node answered every round, b1 included whenever it was online to be selected
            assert c.rounds and all(r["updates"] == r["selected"] for r in c.rounds)
        assert proxy.cuts >= 3
    finally:
        stop_flapping.set()
        stop(list(nodes.values()))
        proxy.close()


@pytest.mark.parametrize("when", ["before-updates", "after-counting"])
def test_an_edge_sigkilled_mid_round_and_restarted_closes_the_round_with_every_node(broker, tmp_path, when):
    """SIGKILL the edge aggregator of home2 mid-round, before its nodes' updates reach it (they wait in its
    session and arrive before the retained model and start) or after it counted two of them (gone with the
    process), and start it again: the round still closes with all six nodes (quorum 0.5 would apply it
    without them), because the restarted edge holds updates until the model has come, and nodes answer a
    start relayed by another edge process again."""
    import yaml

    paths = write_federation(str(tmp_path), broker.port, SIX, rounds=2, deadline_s=40, edge=["home2"], quorum=0.5)
    slow = {"before-updates": {"b1": 4, "b2": 4, "b3": 4}, "after-counting": {"b3": 8}}[when]
    for node, delay in slow.items():
        cfg = yaml.safe_load(open(paths[node]))
        cfg["simulate_delay_s"] = delay
        yaml.safe_dump(cfg, open(paths[node], "w"))
    procs = list(start_nodes(paths, [n for ns in SIX.values() for n in ns], tmp_path).values())
    edge = fedmq(["coordinator", "edge", paths["topic_map"], "--group", "home2"], str(tmp_path / "edge1.log"))
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: c.service.groups[()].current is not None, 30, "round 1 started")
            trained = ("b1", "b2") if when == "after-counting" else ()
            if when == "before-updates":  # killed once it relayed the start; the updates come while it is away
                watch = MqttLink("watch", BrokerSettings(host="127.0.0.1", port=broker.port), persistent=False)
                watch.subscribe(Topics(FED).control(("home2",)))
                watch.start()
                wait_for(lambda: watch.get(timeout=0.2) is not None, 30, "home2's start")
                watch.stop()
            for n in trained:
                wait_for(lambda: "round 1: trained" in (tmp_path / f"{n}.log").read_text(), 30, f"{n}'s update")
            time.sleep(1.0)  # the edge counts them (in memory)
            edge.send_signal(signal.SIGKILL)
            edge.wait(10)
            for n in ("b1", "b2", "b3") if when == "before-updates" else ():
                wait_for(lambda: "round 1: trained" in (tmp_path / f"{n}.log").read_text(), 30, f"{n}'s update")
            edge = fedmq(["coordinator", "edge", paths["topic_map"], "--group", "home2"], str(tmp_path / "edge2.log"))
            wait_for(lambda: len(c.rounds) >= 2, 90, "both rounds")
            assert [r["updates"] for r in c.rounds] == [6, 6], c.rounds
        assert "no reference model" not in (tmp_path / "edge2.log").read_text()
    finally:
        stop(procs + [edge])
