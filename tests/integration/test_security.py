"""Security against a real Mosquitto running the rendered config: TLS, client certificates or passwords,
no anonymous access, revocation, and least-privilege ACLs."""

import os
import re
import signal
import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import yaml

from fedhelp import FED, start_nodes, stop, wait_for, write_federation
from fedmq.broker import pki
from fedmq.broker.process import MosquittoProcess
from fedmq.broker.provision import client_config, client_file, provision, revoke, share_key_file
from fedmq.shared.identities import edge_id
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import BrokerSettings, TlsSettings, load_topic_map
from fedmq.shared.topics import Topics
from inprocess import InThreadCoordinator

GROUPS = {"home1": ["a1", "a2"], "home2": ["b1", "b2"]}


@pytest.fixture
def secured(tmp_path):
    """A provisioned federation and a Mosquitto enforcing it (mutual TLS)."""
    paths = write_federation(str(tmp_path), 1, GROUPS, rounds=2, deadline_s=8)
    tm = load_topic_map(paths["topic_map"])
    sec = str(tmp_path / "sec")
    provision(tm, sec)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec, auth="mtls").start()
    yield paths, tm, sec, broker
    broker.stop()


def tls_for(sec, pid):
    stem = os.path.join(sec, "clients", client_file(pid))
    return TlsSettings(ca_file=os.path.join(sec, "ca.crt"), cert_file=stem + ".crt", key_file=stem + ".key")


def settings(broker, sec, pid=None, **kw):
    return BrokerSettings(host="127.0.0.1", port=broker.port, tls=tls_for(sec, pid) if pid else
                          TlsSettings(ca_file=os.path.join(sec, "ca.crt")), **kw)


def raw_client(broker, sec, pid, client_id=None):
    """A paho client with one party's certificate, reporting PUBACK reason codes."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"raw-{pid}", protocol=mqtt.MQTTv5)
    t = tls_for(sec, pid)
    c.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.acks, c.got, ready = {}, [], threading.Event()
    c.on_publish = lambda cl, u, mid, rc, props: c.acks.__setitem__(mid, rc)
    c.on_message = lambda cl, u, msg: c.got.append(msg.topic)
    c.on_connect = lambda *a: ready.set()
    c.drops = []
    c.on_disconnect = lambda *a: c.drops.append(a[3])
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    assert ready.wait(10)
    return c


def intruder(broker, sec):
    """A client with full broker rights (as after a broker compromise), but none of the parties' signing keys."""
    ca = pki.load_pair(os.path.join(sec, "ca.crt"), os.path.join(sec, "ca.key"))
    pki.issue(
        ca, "intruder", os.path.join(sec, "clients", "intruder.crt"), os.path.join(sec, "clients", "intruder.key")
    )
    with open(os.path.join(sec, "acl"), "a") as fh:
        fh.write("\nuser intruder\ntopic readwrite #\n")
    os.kill(int(open(broker.config.pid_file).read()), signal.SIGHUP)  # Mosquitto reloads its ACL
    time.sleep(0.5)
    return raw_client(broker, sec, "intruder")


def connects(link: MqttLink) -> bool:
    try:
        return link.start(wait_s=3)
    finally:
        link.client.loop_stop()


def test_anonymous_and_foreign_ca_and_revoked_clients_are_refused(secured, tmp_path):
    paths, tm, sec, broker = secured
    assert connects(MqttLink("ok-a1", settings(broker, sec, "a1")))
    assert not connects(MqttLink("anon", settings(broker, sec)))  # TLS without a client certificate
    other = tmp_path / "other"
    other.mkdir()
    ca = pki.make_ca(str(other), "intruder")
    pki.issue(ca, "a2", str(other / "a2.crt"), str(other / "a2.key"))
    foreign = BrokerSettings(
        port=broker.port, tls=TlsSettings(os.path.join(sec, "ca.crt"), str(other / "a2.crt"), str(other / "a2.key"))
    )
    assert not connects(MqttLink("foreign", foreign))
    revoke(tm, sec, "b2")
    broker.restart()
    assert not connects(MqttLink("revoked", settings(broker, sec, "b2")))
    assert connects(MqttLink("ok-b1", settings(broker, sec, "b1")))
    assert "b2" not in open(os.path.join(sec, "acl")).read()


def test_node_cannot_publish_as_another_node_or_read_other_updates(secured):
    paths, tm, sec, broker = secured
    t = Topics(FED)
    coord = raw_client(broker, sec, "coordinator")
    coord.subscribe(f"{t.base}/#", qos=1)
    a1, b1 = raw_client(broker, sec, "a1"), raw_client(broker, sec, "b1")
    a1.subscribe(t.update(("home2",), "b1"), qos=1)  # granted, but filtered at delivery
    a1.subscribe(f"{t.base}/+/_update/+", qos=1)
    time.sleep(0.5)
    forged = a1.publish(t.update(("home2",), "b1"), b"forged", qos=1)
    model = a1.publish(t.model(), b"not a model", qos=1)
    wait_for(lambda: forged.mid in a1.acks and model.mid in a1.acks, 10, "the PUBACKs")
    assert a1.acks[forged.mid].value == 0x87 and a1.acks[model.mid].value == 0x87  # not authorised
    own = b1.publish(t.update(("home2",), "b1"), b"b1's own update", qos=1)
    wait_for(lambda: own.mid in b1.acks, 10, "b1's PUBACK")
    wait_for(lambda: t.update(("home2",), "b1") in coord.got, 10, "the coordinator to get b1's update")
    time.sleep(0.5)
    assert coord.got.count(t.update(("home2",), "b1")) == 1  # the forged one never arrived
    assert t.model() not in coord.got
    assert a1.got == []  # a1 read no other node's update
    for c in (coord, a1, b1):
        c.loop_stop()


@pytest.mark.parametrize("auth", ["mtls", "password"])
def test_whole_federation_over_tls(tmp_path, auth):
    paths = write_federation(str(tmp_path), 1, GROUPS, rounds=2, deadline_s=8)
    tm = load_topic_map(paths["topic_map"])
    sec = str(tmp_path / "sec")
    provision(tm, sec)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec, auth=auth).start()

    def secure(cfg_path, pid):
        cfg = yaml.safe_load(open(cfg_path))
        cfg["broker"].update(port=broker.port, **client_config(sec, pid, auth=auth)["broker"])
        yaml.safe_dump(cfg, open(cfg_path, "w"))

    secure(paths["topic_map"], "coordinator")
    for n in [n for ns in GROUPS.values() for n in ns]:
        secure(paths[n], n)
    nodes = start_nodes(paths, [n for ns in GROUPS.values() for n in ns], tmp_path)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 2, 40, f"two rounds over TLS ({auth})")
            assert all(r["updates"] == 4 for r in c.rounds)
    finally:
        stop(list(nodes.values()))
        broker.stop()
    if auth == "password":
        wrong = BrokerSettings(port=broker.port, tls=TlsSettings(os.path.join(sec, "ca.crt")), username="a1")
        broker.start()
        try:
            link = MqttLink("wrong-password", wrong)
            link.client.username_pw_set("a1", "not-the-password")
            assert not connects(link)
        finally:
            broker.stop()


def signed_federation(tmp_path, auth="mtls", rounds=2):
    """A provisioned federation with TLS and end-to-end signatures on, and its broker."""
    paths = write_federation(str(tmp_path), 1, GROUPS, rounds=rounds, deadline_s=8, quorum=0.75)
    tm = load_topic_map(paths["topic_map"])
    sec = str(tmp_path / "sec")
    provision(tm, sec)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec, auth=auth).start()
    for pid, path in [("coordinator", paths["topic_map"])] + [(n, paths[n]) for ns in GROUPS.values() for n in ns]:
        cfg = yaml.safe_load(open(path))
        sections = client_config(sec, pid, auth=auth)
        cfg["broker"].update(port=broker.port, **sections["broker"])
        cfg["security"] = sections["security"]
        if pid == "coordinator":
            cfg["security"]["signatures"] = True
        yaml.safe_dump(cfg, open(path, "w"))
    return paths, sec, broker


def test_forged_and_replayed_updates_are_rejected_by_signature(tmp_path):
    paths, sec, broker = signed_federation(tmp_path, rounds=3)
    t = Topics(FED)
    nodes = start_nodes(paths, ["a1", "a2", "b1", "b2"], tmp_path)
    # an attacker with full broker rights (a compromised broker config) but not a1's signing key
    evil = intruder(broker, sec)
    evil.captured = []
    evil.on_message = lambda cl, u, msg: evil.captured.append(msg.payload)
    evil.subscribe(t.update(("home1",), "a1"), qos=1)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 1 and evil.captured, 30, "round 1 and a captured update")
            genuine = evil.captured[0]
            # forge: a1's update with the weights changed, its old signature kept
            from fedmq.shared.envelope import decode, encode
            from fedmq.shared.signing import split

            raw, nonce, sig = split(genuine)
            env = decode(raw)
            env.tensors = {k: v * 100 for k, v in env.tensors.items()}
            evil.publish(t.update(("home1",), "a1"), encode(env) + genuine[len(raw) :], qos=1)
            evil.publish(t.update(("home1",), "a1"), genuine, qos=1)  # a replay of the genuine one
            evil.publish(t.update(("home1",), "a1"), raw, qos=1)  # unsigned
            rej = c.service.rejections.total
            wait_for(
                lambda: (
                    rej["bad signature"] >= 1
                    and rej["missing signature"] >= 1
                    and (rej["replayed nonce"] + rej["stale round"]) >= 1
                ),
                20,
                "the three rejections",
            )
            wait_for(lambda: len(c.rounds) >= 3, 30, "the remaining rounds")
            assert all(r["updates"] == 4 for r in c.rounds)
            assert c.error is None
    finally:
        evil.loop_stop()
        stop(list(nodes.values()))
        broker.stop()


def test_nodes_refuse_a_model_not_signed_by_the_coordinator(tmp_path):
    paths, sec, broker = signed_federation(tmp_path)
    nodes = start_nodes(paths, ["a1"], tmp_path)
    evil = intruder(broker, sec)
    from fedmq.shared.envelope import Envelope, Kind, encode
    from fedmq.shared.models import initial_weights

    tm = load_topic_map(paths["topic_map"])
    fake = Envelope(
        Kind.MODEL,
        FED,
        0,
        "coordinator",
        0,
        {k: v + 1 for k, v in initial_weights(tm.model).items()},
        meta={"model": tm.model.to_meta()},
    )
    try:
        wait_for(lambda: "connected" in (tmp_path / "a1.log").read_text(), 20, "a1 to connect")
        evil.publish(Topics(FED).model(), encode(fake), qos=1, retain=True)
        wait_for(lambda: "missing signature" in (tmp_path / "a1.log").read_text(), 20, "the refusal")
    finally:
        evil.loop_stop()
        stop(list(nodes.values()))
        broker.stop()


def test_enrolment_with_one_time_tokens(tmp_path, monkeypatch):
    import numpy as np

    from fedhelp import blobs
    from fedmq.broker.provision import new_tokens
    from fedmq.node.enrol import EnrolmentFailed, enrol_device

    paths = write_federation(str(tmp_path), 1, GROUPS, rounds=500, deadline_s=8, quorum=0.75)
    fed = yaml.safe_load(open(paths["topic_map"]))
    fed["tree"]["groups"]["garage"] = {"admit": ["garage-*"]}
    yaml.safe_dump(fed, open(paths["topic_map"], "w"))
    tm = load_topic_map(paths["topic_map"])
    sec = str(tmp_path / "sec")
    provision(tm, sec)
    tokens = new_tokens(tm, sec, 4)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec, auth="mtls", enrol=True).start()
    for pid, path in [("coordinator", paths["topic_map"])] + [(n, paths[n]) for ns in GROUPS.values() for n in ns]:
        cfg = yaml.safe_load(open(path))
        sections = client_config(sec, pid)
        cfg["broker"].update(port=broker.port, **sections["broker"])
        cfg["security"] = sections["security"]
        if pid == "coordinator":
            cfg["security"].update(signatures=True, dir=sec, broker_pid_file=broker.config.pid_file)
        yaml.safe_dump(cfg, open(path, "w"))
    x, y = blobs(80, seed=42)
    np.savez(tmp_path / "garage.npz", x=x, y=y)
    nodes = start_nodes(paths, ["a1", "a2", "b1", "b2"], tmp_path)
    common = dict(
        federation=FED,
        host="127.0.0.1",
        port=broker.config.enrol_port,
        ca_file=os.path.join(sec, "ca.crt"),
        main_port=broker.port,
        timeout=45,
    )  # a TLS handshake cut during a reload costs paho a backoff
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 1, 30, "round 1")
            monkeypatch.chdir(tmp_path)  # fedmq node enrol --data garage.npz --out device, run where they are
            with pytest.raises(EnrolmentFailed, match="no such file"):
                enrol_device(token=tokens[0], node_id="garage-door-1", out="device", data="missing.npz", **common)
            cfg = str(tmp_path / enrol_device(token=tokens[0], node_id="garage-door-1", out="device",
                                              data="garage.npz", **common))
            monkeypatch.chdir(tmp_path / "device")  # node.yaml's data path does not depend on where it runs
            assert yaml.safe_load(open(cfg))["group"] == "garage"
            nodes["garage-door-1"] = fedmq_node(cfg, tmp_path / "device.log")
            wait_for(lambda: any(r["updates"] == 5 for r in c.rounds), 30, "a round with the enrolled device")
            # the coordinator makes Mosquitto reload a moment after an enrolment; let that happen first
            wait_for(lambda: c.service.enrolment.reload_at is None, 30, "the broker reload after enrolment")
            time.sleep(0.5)
            with pytest.raises(EnrolmentFailed):  # the token is spent
                enrol_device(token=tokens[0], node_id="garage-door-2", out=str(tmp_path / "d2"), **common)
            with pytest.raises(EnrolmentFailed, match="not admitted"):
                enrol_device(token=tokens[1], node_id="stranger", out=str(tmp_path / "d3"), **common)
            revoke(tm, sec, "b2")
            with pytest.raises(EnrolmentFailed, match="revoked"):
                enrol_device(token=tokens[2], node_id="b2", out=str(tmp_path / "d4"), **common)
            rej = c.service.rejections.total
            assert rej["enrol: not admitted by the topic map"] == 1 and rej["enrol: revoked id"] == 1
    finally:
        stop(list(nodes.values()))
        broker.stop()


def fedmq_node(cfg, log):
    from fedhelp import fedmq

    return fedmq(["node", "run", cfg], str(log))


def test_a_party_cannot_take_another_partys_connection_over(secured):
    """Client ids are bound to identities: a node (or anyone) connecting with the coordinator's client id
    gets its own id instead, and the coordinator stays connected (no last will, no stalled rounds)."""
    paths, tm, sec, broker = secured
    coord = raw_client(broker, sec, "coordinator", client_id="fedmq-fed-root")
    thief = raw_client(broker, sec, "a1", client_id="fedmq-fed-root")
    time.sleep(1.0)
    assert coord.is_connected() and thief.is_connected() and coord.drops == []
    t = Topics(FED)
    coord.subscribe(t.update(("home1",), "a1"), qos=1)
    time.sleep(0.3)
    sent = thief.publish(t.update(("home1",), "a1"), b"a1's own update", qos=1)
    wait_for(lambda: t.update(("home1",), "a1") in coord.got, 10, "a1's update at the coordinator")
    wait_for(lambda: sent.mid in thief.acks, 10, "the PUBACK")  # may come after the delivery
    assert thief.acks[sent.mid].value == 0
    for c in (coord, thief):
        c.loop_stop()


def edge_federation(tmp_path, workers=1, rounds=3, quorum=1.0, spare=False):
    """A signed mutual-TLS federation whose group home2 is served by edge processes (``workers`` of them),
    running: its nodes and edges started, the broker returned (the caller stops both). With ``spare``, node
    ``spare`` of home1 is provisioned but never runs (its credentials are an attacker's)."""
    from fedhelp import fedmq, rewrite_yaml

    paths = write_federation(str(tmp_path), 1, GROUPS, rounds=rounds, deadline_s=8, edge=["home2"], quorum=quorum)

    def change(fed):
        fed["tree"]["groups"]["home2"].update(workers=workers)
        if spare:
            fed["tree"]["groups"]["home1"]["nodes"].append("spare")

    rewrite_yaml(paths["topic_map"], change)
    tm = load_topic_map(paths["topic_map"])
    sec = str(tmp_path / "sec")
    provision(tm, sec)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec).start()
    for pid, path in [("coordinator", paths["topic_map"])] + [(n, paths[n]) for ns in GROUPS.values() for n in ns]:
        cfg = yaml.safe_load(open(path))
        sections = client_config(sec, pid)
        cfg["broker"].update(port=broker.port, **sections["broker"])
        cfg["security"] = {**sections["security"], **({"signatures": True} if pid == "coordinator" else {})}
        yaml.safe_dump(cfg, open(path, "w"))
    procs = list(start_nodes(paths, [n for ns in GROUPS.values() for n in ns], tmp_path).values())
    for w in range(workers):
        edge = os.path.join(sec, "clients", client_file(edge_id(("home2",), w)))
        share = ["--share-key", share_key_file(sec, ("home2",))] if workers > 1 else []
        # worker 0 names its files; the others find theirs in the security directory (as the systemd unit does)
        credentials = (
            ["--signing-key", edge + ".sign", "--cert", edge + ".crt", "--key", edge + ".key", *share]
            if w == 0
            else ["--security-dir", sec]
        )
        procs.append(
            fedmq(
                ["coordinator", "edge", paths["topic_map"], "--group", "home2", "--worker", str(w), *credentials],
                str(tmp_path / f"edge{w}.log"),
            )
        )
    return paths, tm, sec, broker, procs


@pytest.mark.parametrize("workers", [1, 2])
def test_signed_mtls_federation_with_an_edge_process(tmp_path, workers):
    """An edge group (split over two worker processes: each with its own certificate, client id and signing
    key) in a federation with mutual TLS, signatures and the least-privilege ACL."""
    paths, tm, sec, broker, procs = edge_federation(tmp_path, workers)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 3, 40, "three signed rounds through the edge")
            assert all(r["updates"] == 4 for r in c.rounds)
            assert not any("signature" in k for k in c.service.rejections.total)
    finally:
        stop(procs)
        broker.stop()


def test_no_other_client_can_join_a_split_groups_shared_subscription(tmp_path):
    """A node that subscribes to the split group's updates under the shared-subscription name anyone could
    guess gets nothing and takes nothing: the workers' share name comes from the group's secret."""
    paths, tm, sec, broker, procs = edge_federation(tmp_path, workers=2, rounds=4, spare=True)
    thief = raw_client(broker, sec, "spare")
    thief.subscribe(f"$share/fedmq-{FED}-home2/{Topics(FED).group(('home2',))}/_update/+", qos=1)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= 4, 60, "four rounds")
            assert all(r["updates"] == 4 for r in c.rounds), c.rounds
        assert thief.got == []
    finally:
        thief.loop_stop()
        stop(procs)
        broker.stop()


def test_a_revoked_edge_that_stays_connected_cannot_inject_partials(tmp_path):
    """Revoking an edge aggregator removes its broker user from the ACL, and the running coordinator reloads
    keys.json: the edge, still connected (Mosquitto not told yet), has its partials refused at once."""
    paths, tm, sec, broker, procs = edge_federation(tmp_path, rounds=200, quorum=0.5)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: any(r["updates"] == 4 for r in c.rounds), 40, "a round through the edge")
            revoke(tm, sec, edge_id(("home2",)))
            assert "user edge/home2" not in open(os.path.join(sec, "acl")).read()
            wait_for(lambda: c.service.rejections.total["unknown signer"] >= 1, 40, "the edge's partial refused")
            done = len(c.rounds)
            wait_for(lambda: len(c.rounds) >= done + 2, 40, "two rounds without the revoked edge")
            assert all(r["updates"] == 2 for r in c.rounds[done:])
    finally:
        stop(procs)
        broker.stop()


def test_only_open_tokens_log_in_on_the_enrolment_listener(tmp_path):
    """Every party also has a password; on the certificate-free enrolment listener none of them may log in
    (an attacker holding the coordinator's password would publish models there), only open tokens."""
    from fedmq.broker.provision import new_tokens

    paths = write_federation(str(tmp_path), 1, GROUPS, rounds=2, deadline_s=8)
    tm = load_topic_map(paths["topic_map"])
    sec = str(tmp_path / "sec")
    provision(tm, sec)
    token_id, secret = new_tokens(tm, sec, 1)[0].split(".", 1)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec, auth="mtls", enrol=True).start()
    try:

        def login(user, password_file):
            cfg = BrokerSettings(
                host="127.0.0.1",
                port=broker.config.enrol_port,
                username=user,
                password_file=password_file,
                tls=TlsSettings(ca_file=os.path.join(sec, "ca.crt")),
            )
            return connects(MqttLink(f"probe-{user}".replace("/", "-"), cfg))

        for pid in ("coordinator", "a1"):
            assert not login(pid, os.path.join(sec, "clients", client_file(pid) + ".password")), (
                f"{pid} logged in without a certificate"
            )
        (tmp_path / "token").write_text(secret)
        assert login(f"enrol-{token_id}", str(tmp_path / "token"))
        assert "coordinator" not in open(os.path.join(sec, "enrol-passwords")).read()
        assert "enrol-" not in open(os.path.join(sec, "passwords")).read()
    finally:
        broker.stop()


def test_an_audit_log_names_a_node_probing_the_acl(tmp_path):
    """With --audit the broker logs ACL denials, and 'fedmq broker denials' names the prober (its client id is
    its identity) and the topics it tried."""
    import subprocess
    import sys

    paths = write_federation(str(tmp_path), 1, GROUPS, rounds=2, deadline_s=8)
    tm = load_topic_map(paths["topic_map"])
    sec = str(tmp_path / "sec")
    provision(tm, sec)
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), security_dir=sec, audit=True).start()
    try:
        t = Topics(FED)
        prober = raw_client(broker, sec, "a1", client_id="innocent-looking")
        sent = [prober.publish(topic, b"probe", qos=1) for topic in (t.model(), t.update(("home2",), "b1"), t.model())]
        wait_for(lambda: all(m.mid in prober.acks for m in sent), 10, "the PUBACKs")
        prober.loop_stop()
        out = subprocess.run(
            [sys.executable, "-m", "fedmq.shared.cli", "broker", "denials", broker.config.log_file],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        broker.stop()
    assert out.returncode == 0, out.stderr
    # a loaded machine may see paho send a publish again (DUP), which the broker refuses and logs again
    refused = re.search(r"a1: (\d+) refused", out.stdout)
    assert refused and int(refused.group(1)) >= 3, out.stdout
    assert t.model() in out.stdout and t.update(("home2",), "b1") in out.stdout


def test_a_revoked_node_leaves_selection_at_once_and_status_says_so(tmp_path):
    """After 'fedmq broker revoke' of a node (here in the edge group), the root and the edge reload keys.json:
    the node is selected no more, rounds do not wait out their deadline for it (also once its process is
    gone and its retained status still says online), and 'fedmq status' shows it revoked."""
    import json
    import subprocess
    import sys

    paths, tm, sec, broker, procs = edge_federation(tmp_path, rounds=400)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: any(r["updates"] == 4 for r in c.rounds), 40, "a round with every node")
            revoke(tm, sec, "b2")
            wait_for(lambda: "b2" not in c.service.presence.online(), 20, "b2 out of the online nodes")
            procs[3].send_signal(signal.SIGKILL)  # gone, its retained status still "online"
            done = len(c.rounds)
            # deadline_s is 8: five rounds that each waited for b2 would take 40 s
            wait_for(lambda: len(c.rounds) >= done + 5, 30, "five rounds without the revoked node")
            assert "b2" not in c.service.driver.selected
            assert all(r["updates"] == 3 for r in c.rounds[done + 1:]), c.rounds[done:]
            out = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "status", paths["topic_map"],
                                  "--security-dir", sec, "--json"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            states = {n["node"]: n["state"] for n in json.loads(out.stdout)["nodes"]}
            assert states["b2"] == "revoked" and states["a1"] == "online", states
    finally:
        stop(procs)
        broker.stop()


def test_retained_messages_a_node_leaves_on_its_chunk_topics_are_cleared(secured, tmp_path):
    """A node may publish retained messages on its own update and chunk topics (its ACL allows the topics,
    Mosquitto cannot refuse retain there): the coordinator clears each one it hears, so the broker neither
    keeps them nor replays them to the next subscriber."""
    paths, tm, sec, broker = secured
    cfg = yaml.safe_load(open(paths["topic_map"]))
    cfg["broker"].update(port=broker.port, **client_config(sec, "coordinator")["broker"])
    yaml.safe_dump(cfg, open(paths["topic_map"], "w"))
    t = Topics(FED)
    node = raw_client(broker, sec, "a1")
    topics = [f"{t.update(('home1',), 'a1')}/_chunk/x{i}" for i in range(6)] + [
        f"{t.update(('home1',), 'a1')}/_chunk/{i}" for i in range(3)] + [t.update(("home1",), "a1")]
    sent = [node.publish(topic, b"\1" * 200_000, qos=1, retain=True) for topic in topics]
    wait_for(lambda: all(m.mid in node.acks for m in sent), 20, "the PUBACKs")
    assert all(node.acks[m.mid].value in (0, 0x10) for m in sent)  # the broker took them
    node.loop_stop()

    probe = intruder(broker, sec)  # reads everything, as its own user

    def kept() -> list:
        probe.got.clear()
        probe.unsubscribe(f"{t.group(('home1',))}/#")
        probe.subscribe(f"{t.group(('home1',))}/#", qos=1)
        time.sleep(1.0)  # retained messages come right after the subscription
        return list(probe.got)

    assert len(kept()) == len(topics)
    from fedmq.coordinator.service import CoordinatorService

    service = CoordinatorService(load_topic_map(paths["topic_map"]))
    runner = threading.Thread(target=service.run, kwargs={"until_finished": False}, daemon=True)
    runner.start()
    try:
        wait_for(lambda: service.rejections.total["retained message"] >= len(topics), 20, "every one refused")
        wait_for(lambda: kept() == [], 20, "the broker to forget them")
    finally:
        service.stop()
        runner.join(10)
        probe.loop_stop()
