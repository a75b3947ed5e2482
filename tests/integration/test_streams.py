"""Stream data sources against a real Mosquitto: simulated homes publish, gateways store and learn, the
federation scales features with statistics equal to the centralised ones, data problems reach the
coordinator with their reasons, bad sensor payloads are counted and dropped, and the store survives a
SIGKILL and a restart."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import numpy as np

from fedhelp import FED, blobs, checkpoint_state, fedmq, stop, wait_for, wait_online, write_federation
from fedmq.coordinator.sim.homes import CLOCK_TOPIC, Simulation
from fedmq.coordinator.sim.publish import Publisher
from fedmq.coordinator.sim.scenario import node_config, write_yaml
from fedmq.node.agent import NodeAgent
from fedmq.node.config import load_node_config
from fedmq.shared.data import open_source
from fedmq.shared.topicmap.model import BrokerSettings
from inprocess import InThreadCoordinator


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def _home_configs(tmp_path, port: int, homes: int, seed: int = 0):
    sim = Simulation(homes, seed, 300.0)
    broker = BrokerSettings(port=port)
    paths = {}
    for home in sim.homes:
        cfg = node_config(home, FED, broker, 300.0, store=str(tmp_path / f"{home.name}.sqlite"),
                          extra={"cache_dir": str(tmp_path / f"cache-{home.name}"), "trainer": "numpy"})
        paths[home.name] = str(tmp_path / f"{home.name}.yaml")
        write_yaml(paths[home.name], cfg)
    return sim, paths


def _topic_map(tmp_path, port: int, homes, scaling: str = "auto") -> str:
    fed = {"federation": FED, "broker": {"host": "127.0.0.1", "port": port},
           "model": {"kind": "softmax_regression", "features": 13, "classes": [0, 1]},
           "rounds": {"rounds": 3, "min_nodes": len(homes), "deadline_s": 20, "local_epochs": 1,
                      "learning_rate": 0.1, "wait_for_nodes_s": 60},
           "scaling": scaling,
           "tree": {"groups": {h: {"nodes": [f"{h}-gw"]} for h in homes}}}
    path = str(tmp_path / "fed.yaml")
    write_yaml(path, fed)
    return path


def _agents(paths):
    agents = []
    for path in paths.values():
        cfg = load_node_config(path)
        source = open_source(cfg.data)
        x, y = source.load()
        agents.append(NodeAgent(cfg, x, y, source=source))
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for t in threads:
        t.start()
    wait_for(lambda: all(a.source.subscribed.is_set() for a in agents), 20, "the data links to subscribe")
    return agents, threads


def _stop(agents, threads):
    for a in agents:
        a.stop()
    for t in threads:
        t.join(10)


def test_streams_fill_the_store_train_with_federated_scaling_and_survive_a_restart(local_broker, tmp_path):
    sim, paths = _home_configs(tmp_path, local_broker.port, 3)
    history = list(sim.run(2 * 86400))
    agents, threads = _agents(paths)
    try:
        with Publisher(BrokerSettings(port=local_broker.port)) as pub:
            pub.publish(history)
        wait_for(lambda: all(len(a.source.load()[0]) > 300 and not a.problem for a in agents), 30,
                 "the stores to fill and the nodes to report no problem")
        with InThreadCoordinator(_topic_map(tmp_path, local_broker.port, list(paths))) as c:
            wait_for(lambda: len(c.rounds) >= 3 or c.error is not None, 90, "3 rounds")
            assert c.error is None, c.error
            scaling = c.service.driver.scaling
        counts = {a.cfg.node_id: a.source.store.count() for a in agents}
    finally:
        _stop(agents, threads)
    # scaling: 'auto' gathered statistics because the nodes stream; they equal the centralised ones
    assert scaling is not None
    xs = [open_source(load_node_config(p).data).replay((t, m) for _, t, m in history)[0] for p in paths.values()]
    allx = np.concatenate(xs).astype(np.float64)
    assert scaling.samples == len(allx)
    assert np.allclose(scaling.mean, allx.mean(0), rtol=1e-6, atol=1e-6)
    assert np.allclose(scaling.scale, allx.std(0), rtol=1e-5, atol=1e-6)
    assert all(r["updates"] == 3 for r in c.rounds)
    # a node restarted keeps its store
    for path in paths.values():
        cfg = load_node_config(path)
        src = open_source(cfg.data)
        assert src.load()[0].shape[0] > 300 and src._open_store().count() == counts[cfg.node_id]
        src.stop()


def test_malformed_sensor_payloads_are_counted_and_dropped(local_broker, tmp_path):
    sim, paths = _home_configs(tmp_path, local_broker.port, 1)
    cfg = load_node_config(paths["home1"])
    source = open_source(cfg.data)
    source.start(logging.getLogger("test"))
    try:
        topic = "zigbee2mqtt/home1_climate"
        junk = [b"not json", b'{"temperature": "warm"}', b'{"temperature": [1, 2]}', b"\xff\xfe", b"x" * 70_000,
                b'{"co2": {"a": 1}}', b"[" * 10_000]
        with Publisher(BrokerSettings(port=local_broker.port), "junk") as pub:
            pub.publish([(0.0, CLOCK_TOPIC, b"1767600000")] + [(0.0, topic, p) for p in junk])
            wait_for(lambda: source.counters()["messages"] >= len(junk) + 1, 20, "the junk to arrive")
            before = _rss_mb()
            pub.publish((0.0, topic, b'{"temperature": "x%d"}' % i) for i in range(20_000))  # a flood
            wait_for(lambda: source.counters()["messages"] >= 20_000 + len(junk), 60, "the flood to arrive")
            grown = _rss_mb() - before
            pub.publish((t, tp, m) for t, tp, m in sim.run(86400))  # then a day of good data
        wait_for(lambda: len(source.load()[0]) > 100, 30, "good rows after the junk")
        dropped = source.counters()["dropped"]
    finally:
        source.stop()
    assert dropped["not JSON"] >= 2 and dropped["not UTF-8"] == 1 and dropped["too large"] == 1
    assert dropped["not a number or known state"] >= 20_001 and dropped["wrong type"] >= 2
    assert grown < 30, f"RSS grew {grown:.1f} MB during a flood of bad readings"


def test_store_is_readable_after_sigkill_during_writes_and_kept_on_restart(local_broker, tmp_path):
    sim, paths = _home_configs(tmp_path, local_broker.port, 1)
    store = str(tmp_path / "home1.sqlite")
    node = fedmq(["node", "run", paths["home1"]], str(tmp_path / "node.log"))
    try:
        wait_for(lambda: "subscribed to" in (tmp_path / "node.log").read_text(), 30, "the node's data link")
        done = threading.Event()

        def publish():
            with Publisher(BrokerSettings(port=local_broker.port)) as pub:
                pub.publish(sim.run(20 * 86400))
            done.set()

        t = threading.Thread(target=publish, daemon=True)
        t.start()

        def rows() -> int:
            try:
                with sqlite3.connect(store) as db:
                    return db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
            except sqlite3.Error:
                return 0

        wait_for(lambda: rows() > 500, 60, "rows being written")
        node.send_signal(signal.SIGKILL)  # in the middle of the stream
        node.wait(10)
        t.join(60)
    finally:
        stop([node])
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    assert kept > 500
    src = open_source(load_node_config(paths["home1"]).data)
    x, y = src.load()  # the restarted node starts from what was stored
    assert len(x) > 400 and src._open_store().count() == kept
    src.stop()
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fedmq"), "node", "check", paths["home1"]],
                         capture_output=True, text=True)
    assert out.returncode == 0 and f"{kept} rows" in out.stdout, out.stdout + out.stderr


def test_each_data_problem_reaches_the_coordinator_with_its_reason(broker, tmp_path):
    groups = {"g1": ["good1", "good2", "floats", "wrongwidth", "outside", "nans", "few"]}
    paths = write_federation(str(tmp_path), broker.port, groups, rounds=2, checkpoint=False,
                             node_extra={"min_samples": 10})
    data = tmp_path / "data"
    x, y = blobs(60, seed=5)
    np.savez(data / "floats.npz", x=x, y=y.astype(np.float64))  # 2.0 as pandas writes it: fine
    np.savez(data / "wrongwidth.npz", x=np.hstack([x, x[:, :1]]), y=y)
    np.savez(data / "outside.npz", x=x, y=np.where(y == 2, 9, y))
    np.savez(data / "nans.npz", x=np.where(np.arange(60)[:, None] == 3, np.nan, x), y=y)
    np.savez(data / "few.npz", x=x[:5], y=y[:5])
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for n in groups["g1"]]
    try:
        # every node announced (with its problem, found before it connects): else, on a busy machine, the first
        # round may start after its 10 s wait without a good node that is still starting
        wait_online(broker.port, {n: ("g1",) for n in groups["g1"]}, timeout=60)
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 2 or c.error is not None, 90, "2 rounds")
            assert c.error is None, c.error
            problems = c.service.presence.problems()
    finally:
        stop(nodes)
    assert set(problems) == {"wrongwidth", "outside", "nans", "few"}
    assert problems["wrongwidth"].startswith("wrong number of features: the data has 9, the model takes 8")
    assert problems["outside"].startswith("labels outside the model's classes: 9")
    assert problems["nans"].startswith("NaN or Inf")
    assert problems["few"].startswith("too few samples: 5")
    for r in c.rounds:  # rounds ran with the others, and said who was held back and why
        assert r["selected"] == r["updates"] == 3 and set(r["problems"]) == set(problems)


def test_an_unusable_evaluation_set_stops_the_coordinator_before_any_round(tmp_path):
    paths = write_federation(str(tmp_path), 1, {"g": ["a"]}, rounds=1)
    x, y = blobs(20, seed=1)
    np.savez(tmp_path / "data" / "test.npz", x=x, y=np.where(y == 0, 7, y))
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fedmq"), "coordinator", "run",
                          paths["topic_map"]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "evaluation" in out.stderr and "labels outside the model's classes: 7" in out.stderr, out.stderr


def _central_scaling(paths, nodes):
    x = np.concatenate([open_source(load_node_config(paths[n]).data).load()[0] for n in nodes]).astype(np.float64)
    return x.mean(0), x.std(0), len(x)


def _check_scaling(scaling, central) -> None:
    mean, std, n = central
    assert scaling is not None and scaling.samples == n
    assert np.allclose(scaling.mean, mean, rtol=1e-4, atol=1e-4) and np.allclose(scaling.scale, std, rtol=1e-4)


def test_federated_scaling_under_secure_aggregation_and_through_an_edge_process(broker, tmp_path):
    """Statistics rounds go through secure aggregation (only masked sums leave the nodes) and through an edge
    aggregator's partial; the scaling equals the centralised statistics, and rounds train on it."""
    groups = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "b3"]}
    paths = write_federation(str(tmp_path), broker.port, groups, rounds=2, checkpoint=True, edge=["home2"],
                             extra={"scaling": "federated", "strategy": {"secure": {"phase_s": 3}, "clip_norm": 100.0}})
    nodes = [n for ns in groups.values() for n in ns]
    procs = [fedmq(["coordinator", "edge", paths["topic_map"], "--group", "home2"], str(tmp_path / "edge.log"))]
    procs += [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for n in nodes]
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 2 or c.error is not None, 120, "2 rounds")
            assert c.error is None, c.error
            scaling = c.service.driver.scaling
    finally:
        stop(procs)
    _check_scaling(scaling, _central_scaling(paths, nodes))  # masked, fixed-point: equal to 1e-4
    assert all(r["updates"] == 6 for r in c.rounds) and c.rounds[-1]["accuracy"] > 0.8
    state = checkpoint_state(tmp_path / "ckpt")
    assert state["scaling"]["samples"] == _central_scaling(paths, nodes)[2] and state["scaling_round"] == 0
    assert "feature statistics" in (tmp_path / "a1.log").read_text()


def test_scaling_refreshed_on_schedule_keeps_what_the_model_learned(broker, tmp_path):
    groups = {"g": ["a", "b", "c"]}
    paths = write_federation(str(tmp_path), broker.port, groups, rounds=4, checkpoint=False,
                             extra={"scaling": {"mode": "federated", "every_rounds": 2}})
    procs = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for n in groups["g"]]
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 4 or c.error is not None, 120, "4 rounds")
            assert c.error is None, c.error
            state = c.service.driver.state
    finally:
        stop(procs)
    assert state.scaling_round == 2  # gathered before round 1 and again after round 2
    # the refold after round 2 keeps the function: accuracy does not fall back to a fresh model's
    assert c.rounds[2]["accuracy"] >= c.rounds[1]["accuracy"] - 0.05
    assert state.model_version == 5  # 4 rounds plus the refolded model


def test_sim_homes_appliances_publishes_plugs_and_writes_node_configs_that_validate(local_broker, tmp_path):
    """``fedmq sim homes --appliances``: two plugs per home on a real broker, with their labels as Home
    Assistant's statestream publishes an input_select, and a node configuration per plug that validates."""
    from fedmq.shared.mqtt import MqttLink

    watch = MqttLink("sim-watch", BrokerSettings(port=local_broker.port), persistent=False)
    watch.subscribe("homeassistant/input_select/#")
    watch.subscribe("tele/#")
    watch.start()
    try:
        out = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "sim", "homes", "--appliances", "--homes", "2",
                              "--days", "0.5", "--port", str(local_broker.port), "--node-configs", str(tmp_path / "c")],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        got = []
        while (msg := watch.get(timeout=2)) is not None:
            got.append((msg.topic, msg.payload))
    finally:
        watch.stop()
    assert sorted(os.listdir(tmp_path / "c")) == [f"home{h}-gw{g}.yaml" for h in (1, 2) for g in (1, 2)]
    labels = {p.decode() for t, p in got if t.startswith("homeassistant/input_select/")}
    assert labels and labels <= {"none", "fridge", "freezer", "kettle", "microwave", "washing_machine",
                                 "dishwasher", "tv", "laptop", "lamp", "heater"}
    assert any(t.startswith("tele/") and b'"ENERGY"' in p for t, p in got)  # a Tasmota plug
    for name in os.listdir(tmp_path / "c"):
        cfg = load_node_config(str(tmp_path / "c" / name))
        assert cfg.federation == "appliances" and cfg.node_id == name[:-5]
        checked = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "validate", str(tmp_path / "c" / name)],
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
