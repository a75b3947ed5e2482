"""Site brokers: three real Mosquittos on loopback (cloud and two sites, each site bridged to the cloud).
A federation runs across them, and only partial aggregates, never a node's update, reach the cloud."""

import json
import os
import threading

import paho.mqtt.client as mqtt
import pytest

from fedhelp import FED, fedmq, rewrite_yaml, stop, wait_for, write_federation
from fedmq.broker.bridge import bridge_for
from fedmq.broker.process import MosquittoProcess, free_port
from fedmq.broker.provision import client_config, provision
from fedmq.shared.identities import edge_id
from fedmq.shared.topicmap import load_topic_map
from fedmq.shared.topics import Topics

GROUPS = {"home1": ["a1", "a2"], "home2": ["b1", "b2"]}


def observer(security):
    """Credentials of a test-only party that may read everything (each identity holds one connection, so the
    test cannot borrow the coordinator's): a certificate, a password and an ACL block, before brokers start."""
    from fedmq.broker import passwords, pki

    stem = os.path.join(security, "clients", "observer")
    pki.issue(pki.load_pair(os.path.join(security, "ca.crt"), os.path.join(security, "ca.key")), "observer",
              stem + ".crt", stem + ".key")
    password = passwords.new_password()
    with open(os.path.join(security, "passwords"), "a") as fh:
        fh.write(f"observer:{passwords.hash_password(password)}\n")
    with open(os.path.join(security, "acl"), "a") as fh:
        fh.write("\nuser observer\ntopic read #\n")
    return {"ca_file": os.path.join(security, "ca.crt"), "cert_file": stem + ".crt", "key_file": stem + ".key",
            "password": password}


def _secured(tmp_path, paths, secure):
    """Every broker with the federation's CA, mutual TLS (or passwords) and the ACL; the bridges log in as the
    edges. Returns (provisioning directory, each edge's credential arguments, the observer's credentials)."""
    edge_args = {}
    security = str(tmp_path / "pki")
    provision(load_topic_map(paths["topic_map"]), security)
    ca = {"ca_file": os.path.join(security, "ca.crt")}

    def secure_map(fed):
        fed["broker"].update(client_config(security, "coordinator", auth=secure)["broker"])
        for g in GROUPS:
            fed["tree"]["groups"][g]["broker"]["tls"] = dict(ca)

    rewrite_yaml(paths["topic_map"], secure_map)
    for g, nodes in GROUPS.items():
        for n in nodes:
            rewrite_yaml(
                paths[n], lambda cfg, n=n: cfg["broker"].update(client_config(security, n, auth=secure)["broker"])
            )
        edge = client_config(security, edge_id((g,)), auth=secure)["broker"]
        edge_args[g] = (
            ["--cert", edge["tls"]["cert_file"], "--key", edge["tls"]["key_file"]]
            if secure == "mtls"
            else ["--username", edge["username"], "--password-file", edge["password_file"]]
        )
    me = observer(security)
    return security, edge_args, me


@pytest.mark.parametrize("secure,prefix", [(None, ""), (None, "cloud/tenant-7/"), ("mtls", "cloud/"), ("password", "")],
                         ids=["plain", "remapped", "mutual-tls-remapped", "passwords-over-tls"])
def test_federation_across_bridged_site_brokers_sends_only_partials_up(tmp_path, secure, prefix):
    """``prefix``: the cloud broker keeps the federation under a topic prefix; the bridges remap the sites'
    plain topics onto it."""
    cloud_port, site_ports = free_port(), {"home1": free_port(), "home2": free_port()}
    paths = write_federation(str(tmp_path), cloud_port, GROUPS, rounds=3, deadline_s=20, edge=list(GROUPS))
    rewrite_yaml(
        paths["topic_map"],
        lambda fed: (
            [fed["tree"]["groups"][g].update(broker={"host": "127.0.0.1", "port": p}) for g, p in site_ports.items()]
            + [fed["broker"].update(topic_prefix=prefix)]
        ),
    )
    for g, nodes in GROUPS.items():  # nodes talk to their site's broker
        for n in nodes:
            rewrite_yaml(paths[n], lambda cfg, g=g: cfg["broker"].update(port=site_ports[g]))
    security, edge_args, me = _secured(tmp_path, paths, secure) if secure else (None, {g: [] for g in GROUPS}, None)
    tm = load_topic_map(paths["topic_map"])
    auth = secure or "mtls"
    cloud = MosquittoProcess(str(tmp_path / "cloud"), port=cloud_port, security_dir=security, auth=auth).start()
    sites = []
    for g, port in site_ports.items():
        site = MosquittoProcess(str(tmp_path / g), port=port, security_dir=security, auth=auth)
        site.config.bridge = bridge_for(tm, (g,), security, auth)
        sites.append(site.start())
    seen, lock = [], threading.Lock()
    sniff = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sniff.on_message = lambda c, u, m: (lock.acquire(), seen.append(m.topic), lock.release())
    if secure:
        sniff.tls_set(
            ca_certs=me["ca_file"],
            certfile=me["cert_file"] if secure == "mtls" else None,
            keyfile=me["key_file"] if secure == "mtls" else None,
        )
        if secure == "password":
            sniff.username_pw_set("observer", me["password"])
    sniff.connect("127.0.0.1", cloud_port)
    sniff.subscribe("#")  # everything on the cloud broker
    sniff.loop_start()
    procs = [
        fedmq(["coordinator", "edge", paths["topic_map"], "--group", g, *edge_args[g]], str(tmp_path / f"edge-{g}.log"))
        for g in GROUPS
    ]
    procs += [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
    t = Topics(FED, prefix)
    statuses = {t.status((g,), n) for g, ns in GROUPS.items() for n in ns}
    try:  # every node's status has crossed its bridge: a node still starting on a busy machine misses no round
        wait_for(lambda: statuses <= set(seen), 60, "the nodes' statuses on the cloud broker")
    except AssertionError:
        stop(procs)
        raise
    report = tmp_path / "report.json"
    coord = fedmq(["coordinator", "run", paths["topic_map"], "--report", str(report)], str(tmp_path / "coord.log"))
    try:
        assert coord.wait(90) == 0, (tmp_path / "coord.log").read_text()[-3000:]
    finally:
        stop([coord, *procs])
        sniff.loop_stop()
        for b in [*sites, cloud]:
            b.stop()
    rounds = json.loads(report.read_text())["rounds"]
    assert [r["updates"] for r in rounds] == [4, 4, 4]
    assert rounds[-1]["accuracy"] > 0.9
    with lock:
        topics = list(seen)
    assert not [x for x in topics if "/_update/" in x], "a node's update crossed a bridge"
    assert all(x.startswith(t.base + "/") for x in topics if "fedmq/v1" in x), "a topic was not remapped"
    assert topics.count(t.partial((), "home1")) == 3 and topics.count(t.partial((), "home2")) == 3
    assert any(x == t.status(("home1",), "a1") for x in topics)  # statuses go up: the root selects online nodes
    for g in GROUPS:  # each edge aggregator worked against its own site broker
        assert f"connected to 127.0.0.1:{site_ports[g]}" in (tmp_path / f"edge-{g}.log").read_text()
