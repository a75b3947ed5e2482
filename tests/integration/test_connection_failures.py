"""A process that cannot reach its broker says why (refused, TLS verification, bad credentials) on every
early attempt while it backs off, and stops promptly on SIGTERM (what systemctl stop sends)."""

import os
import signal

from fedhelp import fedmq, port_open, rewrite_yaml, stop, wait_for, write_federation
from fedmq.broker.pki import make_ca
from fedmq.broker.process import MosquittoProcess, free_port
from fedmq.broker.provision import client_config, provision
from fedmq.shared.topicmap import load_topic_map

GROUPS = {"home1": ["a1"], "b1": ["c1"]}


def log_of(path):
    return open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""


def test_every_process_logs_why_and_stops_on_sigterm_while_the_broker_is_unreachable(tmp_path):
    port = free_port()  # nothing listens here
    paths = write_federation(str(tmp_path), port, GROUPS, edge=["b1"])
    logs = {name: str(tmp_path / f"{name}.log") for name in ("root", "edge", "node")}
    procs = {"root": fedmq(["coordinator", "run", paths["topic_map"]], logs["root"]),
             "edge": fedmq(["coordinator", "edge", paths["topic_map"], "--group", "b1"], logs["edge"]),
             "node": fedmq(["node", "run", paths["a1"]], logs["node"])}
    try:
        for name, log in logs.items():
            wait_for(lambda: "attempt 1: connection refused" in log_of(log), 60, f"{name} to log the refused attempt")
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            assert p.wait(15) == 0, (name, log_of(logs[name]))
    finally:
        stop(list(procs.values()))


def test_a_wrong_ca_and_a_wrong_password_are_named(tmp_path):
    paths = write_federation(str(tmp_path), 1, {"home1": ["a1", "a2", "a3"]})
    sec = str(tmp_path / "sec")
    provision(load_topic_map(paths["topic_map"]), sec)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec, auth="password").start()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    make_ca(str(foreign), "someone else")
    procs, logs = [], {}
    try:
        for node, change in (("a1", {"tls": {"ca_file": str(foreign / "ca.crt")}}), ("a2", {"password_file": None})):
            section = client_config(sec, node, auth="password")["broker"]
            section.update(host="127.0.0.1", port=broker.port, **change)
            if section["password_file"] is None:
                wrong = tmp_path / "wrong.password"
                wrong.write_text("not-the-password\n")
                section["password_file"] = str(wrong)
            rewrite_yaml(paths[node], lambda cfg: cfg.update(broker=section))
            logs[node] = str(tmp_path / f"{node}.log")
            procs.append(fedmq(["node", "run", paths[node]], logs[node]))
        wait_for(lambda: "TLS verification failed" in log_of(logs["a1"]), 60, "the wrong CA to be named")
        assert "check that" in log_of(logs["a1"]) and "ca.crt is the CA" in log_of(logs["a1"])
        wait_for(lambda: "refused the connection of user 'a2'" in log_of(logs["a2"]), 60, "the refused login named")
        assert "Bad user name or password" in log_of(logs["a2"]) or "Not authorized" in log_of(logs["a2"])
        assert "broker.password_file" in log_of(logs["a2"])
        # said once: the broker refuses it again and again (its log counts the attempts), the node says no more
        wait_for(lambda: log_of(broker.config.log_file).count("not authorised") >= 3, 60, "three refused logins")
        assert log_of(logs["a2"]).count("refused the connection") == 1, log_of(logs["a2"])
        # a node speaking plain TCP to the TLS port is told so at its first attempt
        rewrite_yaml(paths["a3"], lambda cfg: cfg["broker"].update(host="127.0.0.1", port=broker.port))
        logs["a3"] = str(tmp_path / "a3.log")
        procs.append(fedmq(["node", "run", paths["a3"]], logs["a3"]))
        wait_for(lambda: "the port speaks TLS and this client does not" in log_of(logs["a3"]), 30, "plain TCP named")
    finally:
        stop(procs)
        broker.stop()


def test_broker_run_stops_with_its_mosquitto_on_sigterm(tmp_path):
    port = free_port()
    paths = write_federation(str(tmp_path), port, GROUPS)
    log = str(tmp_path / "broker.log")
    proc = fedmq(["broker", "run", paths["topic_map"], "--out", str(tmp_path / "m.conf")], log)
    try:
        wait_for(lambda: port_open(port), 30, "fedmq broker run to listen")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not port_open(port)  # no Mosquitto left behind
    finally:
        stop([proc])

