"""Watching a real federation: the Prometheus endpoint against the round summaries, the read-only monitor
identity's ACL on a provisioned Mosquitto, and ``fedmq status``."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import yaml

from fedhelp import FED, ctrl_c_default, fedmq, stop, wait_for, write_federation
from fedmq.broker.process import MosquittoProcess
from fedmq.broker.provision import client_config, provision
from fedmq.shared.identities import MONITOR
from fedmq.shared.topicmap import load_topic_map
from fedmq.shared.topics import Topics

GROUPS = {"home1": ["a1", "a2"], "home2": ["b1", "b2"]}
NODES = [n for ns in GROUPS.values() for n in ns]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """``{(name, labels): value}`` of every sample on the endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({"federation": FED, **labels}.items())))]


def test_metrics_endpoint_agrees_with_the_round_summaries(broker, tmp_path):
    """The root's endpoint, and an edge aggregator's (home2 runs in its own process) for its own group."""
    paths = write_federation(str(tmp_path), broker.port, GROUPS, rounds=4, deadline_s=20, edge=["home2"],
                             node_extra={"simulate_delay_s": 1.5})  # time to scrape between rounds, busy or not
    port, edge_port = free_port(), free_port()
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for n in NODES]
    edge = fedmq(["coordinator", "edge", paths["topic_map"], "--group", "home2", "--metrics", f"127.0.0.1:{edge_port}"],
                 str(tmp_path / "edge.log"))
    report = tmp_path / "report.json"
    coord = fedmq(["coordinator", "run", paths["topic_map"], "--fresh", "--metrics", f"127.0.0.1:{port}", "--report",
                   str(report)], str(tmp_path / "coord.log"))
    consistent = []
    try:
        def settled() -> bool:  # scrapes taken while no round is being applied: every figure of round K in
            try:
                s, e = scrape(port), scrape(edge_port)
            except OSError:
                return False
            k = value(s, "fedmq_rounds_applied_total")
            if (
                k >= 2
                and value(s, "fedmq_round") == k
                and value(s, "fedmq_updates_accepted_total", group="home1") == 2 * k
                and value(e, "fedmq_updates_accepted_total", group="home2") == 2 * k
                and value(s, "fedmq_nodes_online", group="home1") == value(e, "fedmq_nodes_online", group="home2") == 2
            ):
                consistent.append((s, e))
            return bool(consistent)

        wait_for(settled, 60, "a scrape after two applied rounds")
        assert coord.wait(60) == 0, (tmp_path / "coord.log").read_text()
    finally:
        stop(nodes + [edge, coord])
    rounds = json.loads(report.read_text())["rounds"]
    s, e = consistent[-1]
    k = int(value(s, "fedmq_rounds_applied_total"))
    done = rounds[:k]
    assert value(s, "fedmq_model_version") == done[-1]["model_version"]
    assert abs(value(s, "fedmq_model_accuracy_ratio", source="held_out") - done[-1]["accuracy"]) < 1e-9
    assert abs(value(s, "fedmq_model_loss", source="held_out") - done[-1]["loss"]) < 1e-9
    assert value(s, "fedmq_update_bytes_total") == sum(r["bytes_up"] for r in done)
    assert value(s, "fedmq_model_bytes_total") == sum(r["bytes_down"] for r in done)
    assert value(s, "fedmq_round_duration_seconds_count") == k
    assert abs(value(s, "fedmq_round_duration_seconds_sum") - sum(r["seconds"] for r in done)) < 1e-6
    assert value(s, "fedmq_updates_received_total", group="home1") == 2 * k
    assert value(e, "fedmq_updates_received_total", group="home2") == 2 * k
    assert ("fedmq_updates_accepted_total", (("federation", FED), ("group", "home2"))) not in s  # counted once
    assert value(s, "fedmq_rounds_target") == 4
    assert 0 <= value(s, "fedmq_checkpoint_age_seconds") < 60
    assert not [key for key in s if any(lbl == "node" for lbl, _ in key[1])]  # no per-node series by default
    assert all(r["accuracy_source"] == "held_out" and r["timestamp"] > 0 for r in rounds)


def _client(port: int, sec: str, pid: str) -> mqtt.Client:
    """A raw client with one party's certificate, recording what it gets and its PUBACK codes."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=pid, protocol=mqtt.MQTTv5)
    t = client_config(sec, pid)["broker"]["tls"]
    c.tls_set(
        ca_certs=t["ca_file"], certfile=t["cert_file"], keyfile=t["key_file"], tls_version=ssl.PROTOCOL_TLS_CLIENT
    )
    c.got, c.acks, ready = [], {}, threading.Event()
    c.on_message = lambda cl, u, msg: c.got.append(msg.topic)
    c.on_publish = lambda cl, u, mid, rc, props: c.acks.__setitem__(mid, rc)
    c.on_connect = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert ready.wait(10)
    return c


def test_the_monitor_reads_statuses_progress_and_summaries_and_nothing_else(tmp_path):
    paths = write_federation(str(tmp_path), 1, GROUPS, rounds=3, deadline_s=15)
    sec = str(tmp_path / "sec")
    provision(load_topic_map(paths["topic_map"]), sec)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec, auth="mtls").start()
    for pid, path in [("coordinator", paths["topic_map"])] + [(n, paths[n]) for n in NODES]:
        cfg = yaml.safe_load(open(path))
        cfg["broker"].update(port=broker.port, **client_config(sec, pid)["broker"])
        yaml.safe_dump(cfg, open(path, "w"))
    t = Topics(FED)
    monitor = _client(broker.port, sec, MONITOR)
    allowed = [t.round_state(), t.metrics(), t.history(), t.status_filter(("home1",)), t.status_filter(("home2",))]
    forbidden = [t.model(), t.update(("home1",), "+"), t.control(()), t.control(("home1",)), f"{t.base}/_file/#"]
    for topic in allowed + forbidden:
        monitor.subscribe(topic, qos=1)
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for n in NODES]
    try:
        coord = fedmq(["coordinator", "run", paths["topic_map"], "--fresh"], str(tmp_path / "coord.log"))
        assert coord.wait(90) == 0, (tmp_path / "coord.log").read_text()
        wait_for(lambda: {t.round_state(), t.metrics(), t.history()} <= set(monitor.got), 10, "the monitor's topics")
        wait_for(
            lambda: {t.status(("home1",), "a1"), t.status(("home2",), "b2")} <= set(monitor.got),
            10,
            "the nodes' statuses",
        )
        assert not [g for g in monitor.got if "/_model" in g or "/_update/" in g or "/_control" in g or "/_file/" in g]
        # one at a time: Mosquitto 2.0.11 acknowledges a refused publish with 0x87 and may then drop the
        # connection; paho reconnects and resends what is unacknowledged
        tries = []
        for topic, payload in (
            (t.status(("home1",), "a1"), b'{"v":1,"node":"a1","state":"offline"}'),
            (t.metrics(), b'{"v":1,"round":99}'),
            (t.update(("home1",), "a1"), b"x"),
        ):
            tries.append(monitor.publish(topic, payload, qos=1))
            wait_for(lambda: tries[-1].mid in monitor.acks, 30, f"the PUBACK for {topic}")
        assert all(monitor.acks[i.mid].value == 0x87 for i in tries)  # not authorised: it writes nothing

        r = subprocess.run(
            [sys.executable, "-m", "fedmq.shared.cli", "status", paths["topic_map"], "--security-dir", sec, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        view = json.loads(r.stdout)
        assert view["round"]["state"] == "done" and view["round"]["rounds_total"] == 3
        assert len(view["history"]) == 3 and view["last"]["accuracy_source"] == "held_out"
        by_node = {n["node"]: n for n in view["nodes"]}
        assert set(by_node) == set(NODES)
        for n in by_node.values():
            assert n["state"] == "online" and n["trainer"] == "numpy" and n["samples"] > 0 and n["version"]
            assert n["protocol"] and n["last_seen"] > time.time() - 120
        def status() -> str:
            return subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "status", paths["topic_map"],
                                   "--security-dir", sec], capture_output=True, text=True, timeout=60).stdout

        text = status()
        assert "done: 3 of 3 rounds" in text and "home1" in text and "b2" in text and "(held-out)" in text
        # without --security-dir the topic map's credentials are the coordinator's: refused, with the fix
        for command in ("status", "dashboard"):
            r = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", command, paths["topic_map"]],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 2 and "--security-dir" in r.stderr and "coordinator" in r.stderr, r.stderr
        stop([nodes[0]])  # a1 goes away: its last will shows
        assert "a1: offline" in status()
    finally:
        stop(nodes)
        monitor.loop_stop()
        broker.stop()


def test_status_watch_follows_the_rounds_live(broker, tmp_path):
    paths = write_federation(
        str(tmp_path),
        broker.port,
        {"home1": ["a1", "a2"]},
        rounds=4,
        deadline_s=20,
        node_extra={"simulate_delay_s": 0.5},
    )
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for n in ("a1", "a2")]
    watch = subprocess.Popen(
        [sys.executable, "-m", "fedmq.shared.cli", "status", paths["topic_map"], "--watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=ctrl_c_default,
    )
    coord = None
    seen = []
    try:
        json.loads(watch.stdout.readline())  # it is connected and watching: now the federation runs
        coord = fedmq(["coordinator", "run", paths["topic_map"], "--fresh"], str(tmp_path / "coord.log"))
        for line in watch.stdout:
            snap = json.loads(line)
            seen.append((snap["round"].get("state"), snap["round"].get("round"), len(snap["history"])))
            if snap["round"].get("state") == "done":
                break
        assert coord.wait(60) == 0
    finally:
        stop(nodes + ([coord] if coord else []))
        watch.send_signal(2)  # Ctrl-C
        assert watch.wait(15) == 0
    assert seen[-1] == ("done", 4, 4)
    assert len({h for _, _, h in seen}) >= 3  # it printed the rounds as they came, not only the end
    assert any(state == "running" for state, _, _ in seen)
