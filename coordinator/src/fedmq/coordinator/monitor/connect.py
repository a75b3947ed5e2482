"""How a monitor (``fedmq status``, ``fedmq dashboard``) connects: with a read-only observer identity, never
the coordinator's, and subscribed to the retained topics a :class:`FederationView` reads."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Optional

from fedmq.coordinator.monitor.view import FederationView
from fedmq.shared.identities import MONITOR
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import TopicMap
from fedmq.shared.topicmap.model import BrokerSettings, TlsSettings

QUIET_S = 0.5  # retained messages arrive at once: this long without one means we have them all
CONNECT_S = 10.0


def monitor_broker(tm: TopicMap, security_dir: Optional[str], identity: str = MONITOR) -> BrokerSettings:
    """The broker settings an observer connects with: ``identity``'s certificate or password from the security
    directory when given (``monitor`` for fedmq status, ``dashboard`` for the dashboard: each identity holds
    one connection at a time), else the topic map's ``security.dir`` when it has one. The topic map's own
    credentials are the coordinator's: a broker binds client ids to user names, so logging in with them
    would disconnect the running coordinator; MonitorIdentityError says what to pass instead."""
    security_dir = security_dir or tm.security.dir
    if not security_dir:
        b = tm.broker
        if b.username or (b.tls is not None and b.tls.cert_file):
            raise MonitorIdentityError(
                f"the topic map logs in as {b.username or 'the certificate ' + str(b.tls.cert_file if b.tls else '')}"
                f", the coordinator's identity: watching with it would disconnect the running coordinator; pass "
                f"--security-dir DIR (the directory 'fedmq broker provision' wrote) to connect as the read-only "
                f"{identity} identity")
        return b
    from fedmq.broker.provision import client_config

    b = tm.broker
    own = client_config(security_dir, identity, auth="mtls" if b.tls is not None and b.tls.cert_file else "password")
    if b.tls is not None and b.tls.cert_file:
        return replace(b, tls=TlsSettings(**own["broker"]["tls"]))
    return replace(b, username=own["broker"]["username"], password_file=own["broker"]["password_file"])


class MonitorIdentityError(ValueError):
    """Watching would log in with the coordinator's own identity; the message names the option to use."""


def open_view(tm: TopicMap, broker: BrokerSettings) -> "tuple[MqttLink, FederationView]":
    """A connected link subscribed to what a monitor reads, and the view it feeds (``pump``)."""
    view = FederationView(tm)
    link = MqttLink(f"fedmq-monitor-{os.getpid()}-{time.monotonic_ns() % 100000}", broker, persistent=False)
    for topic in view.subscriptions():
        link.subscribe(topic)
    if not link.start(wait_s=CONNECT_S):
        link.stop()
        raise ConnectionError(f"cannot reach the broker {broker.host}:{broker.port} within {CONNECT_S:g} s")
    return link, view


def pump(link: MqttLink, view: FederationView, quiet_s: float = QUIET_S, limit_s: float = 5.0,
         first: bool = True) -> bool:
    """Feed what arrives until ``quiet_s`` pass without a message, after the first one when ``first`` (the
    retained messages follow the subscriptions), at most ``limit_s``; True if anything changed."""
    changed, end, last = False, time.monotonic() + limit_s, None if first else time.monotonic()
    while time.monotonic() < end and (last is None or time.monotonic() - last < quiet_s):
        msg = link.get(timeout=0.05)
        if msg is not None:
            last = time.monotonic()
            changed = view.feed(msg) or changed
    return changed
