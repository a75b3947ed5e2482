"""``fedmq status FED.yaml``: the tree of groups with each node's state, the round and its progress, the last
summaries and open problems, read from the broker's retained topics as the read-only ``monitor`` identity
(``--security-dir``) or the topic map's own credentials. ``--json`` for scripts, ``--watch`` to follow."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional

from fedmq.coordinator.monitor.view import FederationView, ago, summary_line
from fedmq.shared.identities import DASHBOARD, MONITOR
from fedmq.shared.logs import add_log_format
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import TopicMap, load_topic_map
from fedmq.shared.topicmap.model import BrokerSettings, TlsSettings

QUIET_S = 0.5  # retained messages arrive at once: this long without one means we have them all
CONNECT_S = 10.0


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq status`` and ``fedmq dashboard``."""
    p = sub.add_parser("status", help="the federation's groups, nodes, round and problems, from the broker",
                       description="Read the federation's retained statuses, round progress and summaries from its "
                                   "broker and print the tree of groups with each node's state, the current round, "
                                   "the last rounds and open problems. Exit code 0, or 2 when the broker cannot be "
                                   "reached.")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the whole view as JSON (for scripts)")
    p.add_argument("--watch", action="store_true", help="follow the federation live (Ctrl-C to stop)")
    p.set_defaults(func=_status)
    d = sub.add_parser("dashboard", help="a live web page of the federation (no internet needed)",
                       description="Serve one web page that shows the group tree with node presence, the round's "
                                   "progress, accuracy and loss per round, bytes per round, rejections and each "
                                   "node's details, updated live from the broker's retained topics (server-sent "
                                   "events). Everything is served from here: it works offline on a LAN.")
    _common(d)
    d.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT",
                   help="where to serve the page (default 127.0.0.1:8765; port 0 picks a free one)")
    add_log_format(d)
    d.set_defaults(func=_dashboard, default_verbosity=1)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic_map", help="federation topic map (YAML)")
    p.add_argument("--security-dir", metavar="DIR",
                   help="the directory 'fedmq broker provision' wrote: connect as its read-only observer identity "
                        "(monitor for status, dashboard for the dashboard; default: the topic map's own credentials)")


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


def render(snap: Dict[str, Any]) -> str:
    """The view as text: header, round, last summary, tree, problems."""
    now = time.time()
    lines = [f"federation {snap['federation']}: {summary_line(snap)}"]
    last = snap["last"]
    if last:
        source = {"held_out": "held-out", "node_training_data": "nodes' own data"}.get(last.get("accuracy_source"), "")
        acc = last.get("accuracy")
        lines.append(f"last round {last['round']} ({ago(last.get('timestamp'), now)}): accuracy "
                     f"{'-' if acc is None else f'{acc:.4f}'}{f' ({source})' if source else ''}, loss "
                     f"{last.get('loss', '-') if last.get('loss') is None else round(last['loss'], 4)}, "
                     f"{last.get('updates', 0)} updates, {last.get('bytes_up', 0):,} B up, "
                     f"{last.get('bytes_down', 0):,} B down")
    for h in snap["history"][-5:-1][::-1]:
        acc = h.get("accuracy")
        lines.append(f"  round {h['round']}: accuracy {'-' if acc is None else f'{acc:.4f}'}, {h.get('updates', 0)} "
                     f"updates")
    lines.append("")
    by_group: Dict[str, List[Dict[str, Any]]] = {}
    for n in snap["nodes"]:
        by_group.setdefault(n["group"], []).append(n)
    for group in snap["groups"]:
        depth = len(group.split("/")) if group else 0
        lines.append("  " * depth + (group.rsplit("/", 1)[-1] if group else "/ (root)"))
        for n in by_group.get(group, []):
            detail = ""
            if n["state"] == "online":
                detail = (f"seen {ago(n.get('last_seen'), now)}, round {n.get('last_round') or '-'}, "
                          f"{n.get('trainer') or '?'}, {n.get('samples', 0)} samples"
                          + (f", fedmq {n['version']}" if n.get("version") else "")
                          + stream_note(n.get("data") or {})
                          + (f"  PROBLEM: {n['problem']}" if n.get("problem") else ""))
            lines.append("  " * (depth + 1) + f"{n['node']:<20} {n['state']:<8} {detail}".rstrip())
    if snap["problems"]:
        lines += ["", "problems:", *(f"  {p}" for p in snap["problems"])]
    return "\n".join(lines)


def stream_note(data: Dict[str, Any]) -> str:
    """``, stream dropped 3 rows, 5 readings (not JSON 3, field missing 2), 40 rows unlabelled`` or ''."""
    parts = []
    dropped = data.get("dropped") or {}
    if data.get("dropped_rows") or dropped:
        readings = sum(dropped.values())
        parts.append(f"dropped {data.get('dropped_rows', 0)} rows, {readings} readings"
                     + (f" ({', '.join(f'{k} {v}' for k, v in sorted(dropped.items()))})" if dropped else ""))
    if data.get("unlabelled_rows"):
        parts.append(f"{data['unlabelled_rows']} rows unlabelled")
    return (", stream " + ", ".join(parts)) if parts else ""


def _status(args: argparse.Namespace) -> int:
    tm = load_topic_map(args.topic_map)
    try:
        link, view = open_view(tm, monitor_broker(tm, args.security_dir))
    except (ConnectionError, MonitorIdentityError) as exc:
        print(f"fedmq status: {exc}", file=sys.stderr)
        return 2
    try:
        pump(link, view)
        if not args.watch:
            print(json.dumps(view.snapshot(), indent=1) if args.json else render(view.snapshot()))
            return 0
        shown = -1
        while True:
            if view.version != shown or int(time.time()) % 5 == 0:  # "ago" and deadlines move too
                shown = view.version
                text = json.dumps(view.snapshot()) if args.json else "\033[H\033[2J" + render(view.snapshot())
                print(text, flush=True)
            pump(link, view, quiet_s=1.0, limit_s=1.0, first=False)
    except KeyboardInterrupt:
        return 0
    finally:
        link.stop()


def _dashboard(args: argparse.Namespace) -> int:
    from fedmq.coordinator.monitor.dashboard import Dashboard

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # serve_forever ends; the finally below stops cleanly
    tm = load_topic_map(args.topic_map)
    try:
        board = Dashboard(tm, monitor_broker(tm, args.security_dir, DASHBOARD), args.listen)
    except (ConnectionError, OSError, ValueError) as exc:
        print(f"fedmq dashboard: {exc}", file=sys.stderr)
        return 2
    print(f"fedmq dashboard: {board.url}", flush=True)
    try:
        board.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0
