"""Site brokers: a group with its own ``broker`` in the topic map gets its own Mosquitto, bridged to the
broker of its parent (the nearest ancestor site, or the root's). Topics are remapped from the site's
``topic_prefix`` to the parent's (by default both empty: the same names on both sides). Only what the
site's edge aggregator and the root need crosses the bridge: the model, model files and the parent's round
control come in; the site's partial aggregate and its nodes' statuses (the root selects online nodes) go
out. A node's update never leaves its site.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

from fedmq.broker.provision import client_config
from fedmq.shared.chunks import chunk_filter
from fedmq.shared.identities import edge_id
from fedmq.shared.topicmap import BrokerSettings, TlsSettings, TopicMap
from fedmq.shared.topicmap.model import GroupPath
from fedmq.shared.topics import Topics


@dataclass(frozen=True)
class Bridge:
    """One Mosquitto bridge: where the parent broker is and which topics cross in which direction."""

    name: str
    remote: BrokerSettings
    topics: Tuple[Tuple[str, str], ...]  # (topic filter relative to the federation, "in" or "out")
    local_base: str  # the federation's topics on the site broker (its topic_prefix + fedmq/v1/<federation>)
    remote_base: str  # and on the parent broker: the bridge remaps one onto the other


def bridge_for(tm: TopicMap, site: GroupPath, security_dir: Optional[str] = None, auth: str = "mtls") -> Bridge:
    """The bridge from site ``site`` (a group with its own broker) to its parent's broker. With a provisioning
    directory the bridge logs in to the parent as the site's edge aggregator (TLS, its certificate or its
    password), whose ACL allows exactly what the bridge carries."""
    group = tm.groups().get(site)
    if group is None or group.broker is None:
        raise ValueError(f"group {'/'.join(site)!r} has no broker of its own in {tm.file}")
    t = Topics(tm.federation)  # patterns relative to the federation, then each side's own prefix
    parent = site[:-1]
    partial = t.partial(parent, site[-1])
    topics: List[Tuple[str, str]] = [
        (t.model(), "in"),
        (chunk_filter(t.model()), "in"),
        (t.files_filter(), "in"),
        (t.control(parent), "in"),
        (partial, "out"),
        (chunk_filter(partial), "out"),
    ]
    topics += [(t.status_filter(p), "out") for p in tm.site_groups(site)]
    relative = tuple((pattern[len(t.base) + 1 :], direction) for pattern, direction in topics)
    remote = tm.broker_for(parent)
    if security_dir is not None:
        cfg = client_config(security_dir, edge_id(site), auth=auth)["broker"]
        tls = cfg["tls"]
        remote = replace(
            remote,
            tls=TlsSettings(tls["ca_file"], tls.get("cert_file"), tls.get("key_file")),
            username=cfg.get("username"),
            password_file=cfg.get("password_file"),
        )
    return Bridge(
        name=f"fedmq-{tm.federation}-{'-'.join(site)}",
        remote=remote,
        topics=relative,
        local_base=Topics(tm.federation, group.broker.topic_prefix).base,
        remote_base=Topics(tm.federation, remote.topic_prefix).base,
    )


def render_bridge(bridge: Bridge) -> List[str]:
    """mosquitto.conf lines for the bridge: MQTT v5, persistent session (cleansession false), QoS 1."""
    r = bridge.remote
    lines = [
        "",
        f"# Bridge to the parent broker {r.host}:{r.port}: only partial aggregates and statuses go up.",
        f"connection {bridge.name}",
        f"address {r.host}:{r.port}",
        "bridge_protocol_version mqttv50",
        "cleansession false",
        f"remote_clientid {bridge.name}",
        f"local_clientid {bridge.name}-local",
        "try_private true",
        "restart_timeout 1 30",
        "notifications true",
        "notifications_local_only true",
    ]
    if r.tls is not None:
        lines += [f"bridge_cafile {r.tls.ca_file}"]
        if r.tls.cert_file and r.tls.key_file:
            lines += [f"bridge_certfile {r.tls.cert_file}", f"bridge_keyfile {r.tls.key_file}"]
    if r.username:
        lines += [f"remote_username {r.username}"]
        if r.password_file:
            with open(r.password_file, encoding="utf-8") as fh:
                lines += [f"remote_password {fh.read().strip()}"]
    lines += [
        f"topic {pattern} {direction} 1 {bridge.local_base}/ {bridge.remote_base}/"
        for pattern, direction in bridge.topics
    ]
    return lines
