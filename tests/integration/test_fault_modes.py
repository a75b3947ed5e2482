"""The faults of the fault table under the transport and strategy modes: chunked messages, async mode,
secure aggregation, HierFAVG edge rounds and a group split over two edge workers, each with the broker
killed and restarted (SIGKILL) and with the coordinator SIGKILLed and restarted, mid-federation. Every
federation must finish all its rounds, without a traceback anywhere."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from fedhelp import checkpoint_state, fedmq, rewrite_yaml, stop, wait_for, write_federation

GROUPS = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "b3"]}
ROUNDS = 5
MODES = {
    "chunked": {"model": {"kind": "mlp", "features": 8, "classes": [0, 1, 2], "hidden": [64]},
                "transport": {"max_payload_bytes": 1024}},
    "async": {"strategy": {"mode": "async", "clip_norm": 10.0, "async": {"buffer_size": 3, "max_staleness": 20}}},
    "secure": {"strategy": {"secure": {"phase_s": 3}, "clip_norm": 10.0}},
    "hierfavg": {"strategy": {"edge_rounds": [2], "clip_norm": 10.0}},
    "workers": {},
}


def _federation(tmp_path, port, mode, fault, broker):
    edge = ["home1"] if mode == "workers" else ["home2"] if mode in ("hierfavg", "chunked") else None
    paths = write_federation(str(tmp_path), port, GROUPS, rounds=ROUNDS, deadline_s=15, quorum=0.6, edge=edge,
                             extra={k: v for k, v in MODES[mode].items() if k != "model"},
                             extra_rounds={"on_quorum_failure": "retry", "max_retries": 20},
                             node_extra={"simulate_delay_s": 0.4})
    with open(paths["topic_map"]) as fh:
        fed = yaml.safe_load(fh)
    if "model" in MODES[mode]:
        fed["model"] = MODES[mode]["model"]
    if mode == "workers":
        fed["tree"]["groups"]["home1"]["workers"] = 2
    with open(paths["topic_map"], "w") as fh:
        yaml.safe_dump(fed, fh)
    procs = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
    workers = 2 if mode == "workers" else 1
    for w in range(workers if edge else 0):
        args = ["coordinator", "edge", paths["topic_map"], "--group", edge[0]]
        procs.append(fedmq(args + (["--worker", str(w)] if workers > 1 else []), str(tmp_path / f"edge{w}.log")))
    coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
    ckpt = tmp_path / "ckpt"
    try:
        wait_for(lambda: (checkpoint_state(ckpt) or {}).get("rounds_done", 0) >= 2, 90, "two rounds")
        if fault == "broker":
            broker.process.restart(hard=True)
        else:
            coord.kill()
            coord.wait()
            time.sleep(0.3)
            coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord2.log"))
        assert (checkpoint_state(ckpt) or {}).get("rounds_done", 0) < ROUNDS, "the fault came too late"
        assert coord.wait(150) == 0, [p.read_text()[-2000:] for p in tmp_path.glob("coord*.log")]
    finally:
        stop([coord, *procs])
    state = checkpoint_state(ckpt)
    assert state["rounds_done"] == ROUNDS and [h["round"] for h in state["history"]] == list(range(1, ROUNDS + 1))
    for log in tmp_path.glob("*.log"):
        assert "Traceback" not in log.read_text(), log
    return state


@pytest.mark.parametrize("fault", ["broker", "coordinator"])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_survives_a_broker_kill_and_a_coordinator_kill(local_broker, tmp_path, mode, fault):
    state = _federation(tmp_path, local_broker.port, mode, fault, local_broker)
    if mode != "async":
        assert all(h["updates"] >= 4 for h in state["history"]), json.dumps(state["history"])[:2000]


@pytest.mark.parametrize("fault", ["site-broker", "cloud-broker", "coordinator"])
def test_bridged_site_brokers_survive_broker_and_coordinator_kills(tmp_path, fault):
    """A cloud broker and two site brokers bridged to it (each site's nodes and edge aggregator on its own
    broker); one of them, or the coordinator, is SIGKILLed and restarted mid-federation."""
    from fedmq.broker.bridge import bridge_for
    from fedmq.broker.process import MosquittoProcess, free_port
    from fedmq.shared.topicmap import load_topic_map

    cloud_port, site_ports = free_port(), {"home1": free_port(), "home2": free_port()}
    paths = write_federation(str(tmp_path), cloud_port, GROUPS, rounds=ROUNDS, deadline_s=20, edge=list(GROUPS),
                             extra_rounds={"on_quorum_failure": "retry", "max_retries": 20},
                             node_extra={"simulate_delay_s": 0.4})
    rewrite_yaml(
        paths["topic_map"],
        lambda fed: [
            fed["tree"]["groups"][g].update(broker={"host": "127.0.0.1", "port": p}) for g, p in site_ports.items()
        ],
    )
    for g, nodes in GROUPS.items():
        for n in nodes:
            rewrite_yaml(paths[n], lambda cfg, g=g: cfg["broker"].update(port=site_ports[g]))
    tm = load_topic_map(paths["topic_map"])
    cloud = MosquittoProcess(str(tmp_path / "cloud"), port=cloud_port).start()
    sites = {}
    for g, port in site_ports.items():
        sites[g] = MosquittoProcess(str(tmp_path / g), port=port)
        sites[g].config.bridge = bridge_for(tm, (g,), None, "mtls")
        sites[g].start()
    procs = [
        fedmq(["coordinator", "edge", paths["topic_map"], "--group", g], str(tmp_path / f"edge-{g}.log"))
        for g in GROUPS
    ]
    procs += [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
    coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
    ckpt = tmp_path / "ckpt"
    try:
        wait_for(lambda: (checkpoint_state(ckpt) or {}).get("rounds_done", 0) >= 2, 90, "two rounds")
        if fault == "site-broker":
            sites["home2"].restart(hard=True)
        elif fault == "cloud-broker":
            cloud.restart(hard=True)
        else:
            coord.kill()
            coord.wait()
            coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord2.log"))
        assert (checkpoint_state(ckpt) or {}).get("rounds_done", 0) < ROUNDS, "the fault came too late"
        assert coord.wait(150) == 0, [p.read_text()[-2000:] for p in tmp_path.glob("coord*.log")]
    finally:
        stop([coord, *procs])
        for b in [*sites.values(), cloud]:
            b.stop()
    state = checkpoint_state(ckpt)
    assert state["rounds_done"] == ROUNDS and all(h["updates"] >= 4 for h in state["history"])
    for log in tmp_path.glob("*.log"):
        assert "Traceback" not in log.read_text(), log
