"""``fedmq node enrol``: a new device trades a one-time token for its credentials and a node config.

It logs in to the broker as the token's user (TLS, checked against the federation's CA), sends its id,
and writes what the coordinator answers into a directory: certificate, key, password, signing key, CA,
public keys and a ready ``node.yaml``. Then ``fedmq node run DIR/node.yaml``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import yaml

from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import BrokerSettings, TlsSettings
from fedmq.shared.topics import Topics

REFUSALS_BEFORE_GIVING_UP = 2


class EnrolmentFailed(RuntimeError):
    """The coordinator refused, or did not answer."""


def _log_in(link: MqttLink, timeout: float) -> bool:
    """Connect; give up early once the broker refused the token twice (paho retries a second later, which
    covers a broker that was reloading its password file at the first attempt)."""
    link.start(wait_s=None)
    end = time.monotonic() + timeout
    while time.monotonic() < end and link.refusals < REFUSALS_BEFORE_GIVING_UP:
        if link.connected.wait(0.1):
            return True
    return False


def enrol_device(*, federation: str, host: str, port: int, ca_file: str, token: str, node_id: str, out: str,
                 data: Optional[str] = None, main_port: Optional[int] = None, timeout: float = 30.0) -> str:
    """Enrol and write the credentials and node.yaml into ``out``; returns the node.yaml path. node.yaml names
    ``data`` by its absolute path (node.yaml's paths are read relative to node.yaml, not to where this ran);
    a ``data`` file that does not exist is refused before the token is spent."""
    token_id, _, secret = token.partition(".")
    if not token_id or not secret:
        raise EnrolmentFailed("a token looks like <id>.<secret>")
    if data is not None and not os.path.isfile(data):
        raise EnrolmentFailed(f"--data {data}: no such file (the token is not spent); name the device's NPZ file")
    topics = Topics(federation)
    link = MqttLink(f"fedmq-enrol-{token_id}", BrokerSettings(host=host, port=port, tls=TlsSettings(ca_file=ca_file)),
                    persistent=False)
    link.client.username_pw_set(f"enrol-{token_id}", secret)
    link.subscribe(topics.enrol_reply(token_id))
    if not _log_in(link, timeout):
        link.stop()
        why = f"the broker said: {link.last_refusal}" if link.last_refusal else "no answer from the broker"
        raise EnrolmentFailed(f"could not log in to {host}:{port} with this token ({why}; a used or wrong token, "
                              "or a broker that has not reloaded its password file since the token was made)")
    try:
        link.publish(topics.enrol_request(token_id), json.dumps({"v": 1, "token": token, "node_id": node_id}).encode())
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = link.get(0.2)
            if msg is not None:
                reply = json.loads(msg.payload.decode("utf-8"))
                break
        else:
            raise EnrolmentFailed(f"no answer from the coordinator within {timeout:.0f}s")
    finally:
        link.stop()
    if reply.get("status") != "ok":
        raise EnrolmentFailed(f"refused: {reply.get('reason', 'no reason given')}")
    os.makedirs(out, exist_ok=True)
    names = {"cert": "client.crt", "key": "client.key", "password": "client.password", "signing_key": "client.sign",
             "ca": "ca.crt", "keys": "keys.json"}
    for field, name in names.items():
        fd = os.open(os.path.join(out, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(reply[field])
    cfg = {"node_id": node_id, "federation": federation, "group": reply["group"],
           "broker": {"host": host, "port": main_port or port,
                      "tls": {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"}},
           "security": {"keys": "keys.json", "signing_key": "client.sign"},
           "data": {"kind": "npz", "path": os.path.abspath(data) if data else "data.npz"}}
    path = os.path.join(out, "node.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path
