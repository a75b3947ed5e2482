"""Provisioning is additive, revocation reaches every file, and the ACL is least privilege."""

import json
import os

from cryptography import x509

from fedmq.broker.acl import render_acl
from fedmq.broker.provision import Registry, new_tokens, provision, revoke
from fedmq.shared.topicmap import parse_topic_map

MAP = """
federation: f
model: {kind: softmax_regression, features: 2, classes: [a, b]}
tree:
  groups:
    home: {nodes: [n1, n2]}
    site: {edge: true, groups: {floor: {nodes: [s1]}}}
"""


def test_running_again_adds_parties_and_keeps_existing_credentials(tmp_path):
    d = str(tmp_path / "pki")
    added = provision(parse_topic_map(MAP), d)
    assert set(added) == {"coordinator", "monitor", "dashboard", "edge/site", "n1", "n2", "s1"}
    n1_cert = open(os.path.join(d, "clients", "n1.crt"), "rb").read()
    n1_hash = [line for line in open(os.path.join(d, "passwords")) if line.startswith("n1:")]
    bigger = parse_topic_map(MAP.replace("nodes: [n1, n2]", "nodes: [n1, n2, n3]"))
    assert provision(bigger, d) == ["n3"]
    assert open(os.path.join(d, "clients", "n1.crt"), "rb").read() == n1_cert
    assert [line for line in open(os.path.join(d, "passwords")) if line.startswith("n1:")] == n1_hash
    assert set(json.load(open(os.path.join(d, "keys.json")))) == {
        "coordinator",
        "monitor",
        "dashboard",
        "edge/site",
        "n1",
        "n2",
        "n3",
        "s1",
    }


def test_revocation_reaches_passwords_acl_crl_and_keys(tmp_path):
    d = str(tmp_path / "pki")
    tm = parse_topic_map(MAP)
    provision(tm, d)
    revoke(tm, d, "n2")
    assert not any(line.startswith("n2:") for line in open(os.path.join(d, "passwords")))
    assert "user n2" not in open(os.path.join(d, "acl")).read()
    assert "n2" not in json.load(open(os.path.join(d, "keys.json")))
    crl = x509.load_pem_x509_crl(open(os.path.join(d, "crl.pem"), "rb").read())
    assert [r.serial_number for r in crl] == [Registry.load(d).parties["n2"]["serial"]]
    assert provision(tm, d) == []  # a revoked id is not re-created by running provision again


def test_acl_is_least_privilege_for_every_party(tmp_path):
    tm = parse_topic_map(MAP)
    text = render_acl(tm, {"n1": ("home",), "s1": ("site", "floor")}, tokens=["t1"])
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in text.split("\n\n") if b.startswith("user ")}
    assert blocks["user n1"] == [
        "topic write fedmq/v1/f/home/_update/n1",
        "topic write fedmq/v1/f/home/_update/n1/_chunk/+",
        "topic write fedmq/v1/f/home/_status/n1",
        "topic read fedmq/v1/f/_model",
        "topic read fedmq/v1/f/_model/_chunk/+",
        "topic read fedmq/v1/f/_file/#",
        "topic read fedmq/v1/f/home/_control",
        "topic write fedmq/v1/f/home/_secagg/n1",
        "topic read fedmq/v1/f/home/_secagg/_all",
        "topic read fedmq/v1/f/home/_secagg/_to/n1",
        "topic read fedmq/v1/f/home/_model",
        "topic read fedmq/v1/f/home/_model/_chunk/+",
    ]
    edge = blocks["user edge/site"]
    assert "topic write fedmq/v1/f/_partial/site" in edge and "topic read fedmq/v1/f/_control" in edge
    assert "topic write fedmq/v1/f/site/_model" in edge  # its own edge-round model (HierFAVG)
    assert not any(rule.startswith("topic write fedmq/v1/f/_model") for rule in edge)  # never the global model
    assert "topic write fedmq/v1/f/site/_secagg/_to/+" in edge and "topic read fedmq/v1/f/site/_secagg/+" in edge
    coord = blocks["user coordinator"]
    assert "topic read fedmq/v1/f/#" in coord and not any("_status" in r for r in coord if "write" in r)
    # updates: only to clear what a node leaves retained there (the group's update topics and their chunks)
    groups, chunks = ("", "home/", "site/", "site/floor/"), ("", "/_chunk/+")
    assert {r for r in coord if "write" in r and "_update" in r} == {
        f"topic write fedmq/v1/f/{g}_update/+{c}" for g in groups for c in chunks}
    assert blocks["user enrol-t1"] == [
        "topic write fedmq/v1/f/_enrol/request/t1",
        "topic read fedmq/v1/f/_enrol/reply/t1",
    ]


def test_tokens_are_stored_hashed(tmp_path):
    d = str(tmp_path / "pki")
    tm = parse_topic_map(MAP)
    provision(tm, d)
    token = new_tokens(tm, d, 1)[0]
    stored = json.dumps(Registry.load(d).tokens)
    assert token.split(".")[1] not in stored and token.split(".")[1] not in open(os.path.join(d, "passwords")).read()


def _enrolment(tmp_path):
    tm = parse_topic_map(MAP.replace("home: {nodes: [n1, n2]}", 'home: {nodes: [n1, n2], admit: ["*"]}'))
    d = str(tmp_path / "pki")
    provision(tm, d)
    return tm, d


def test_enrolment_refuses_ids_that_collide_on_disk_or_take_a_brokers_user(tmp_path):
    import pytest

    from fedmq.broker.provision import EnrolmentRefused, enrol

    tm, d = _enrolment(tmp_path)
    tokens = [t.split(".") for t in new_tokens(tm, d, 6)]
    other_token = tokens[5][0]
    for (tid, secret), bad in zip(
        tokens, ["n1:x", "edge__site", f"enrol-{other_token}", "coordinator", "monitor", "../evil"]
    ):
        with pytest.raises(EnrolmentRefused, match="id not available"):
            enrol(tm, d, tid, secret, bad)
    assert enrol(tm, d, tokens[0][0], tokens[0][1], "dev-7")["group"]  # the token was not spent by the refusals


def test_tokens_expire(tmp_path, monkeypatch):
    import time

    import pytest

    from fedmq.broker import provision as prov

    tm, d = _enrolment(tmp_path)
    tid, secret = new_tokens(tm, d, 1, ttl_s=60)[0].split(".")
    assert f"user enrol-{tid}" in open(os.path.join(d, "acl")).read()
    later = time.time() + 61
    monkeypatch.setattr(prov.time, "time", lambda: later)
    with pytest.raises(prov.EnrolmentRefused, match="expired token"):
        prov.enrol(tm, d, tid, secret, "dev-1")
    prov.refresh(tm, d)  # an expired token loses its broker user
    assert f"user enrol-{tid}" not in open(os.path.join(d, "acl")).read()
