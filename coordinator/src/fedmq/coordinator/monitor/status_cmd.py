"""``fedmq status FED.yaml``: the tree of groups with each node's state, the round and its progress, the last
summaries and open problems, read from the broker's retained topics as the read-only ``monitor`` identity
(``--security-dir``) or the topic map's own credentials. ``--json`` for scripts, ``--watch`` to follow."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any, Dict, List

from fedmq.coordinator.monitor.connect import MonitorIdentityError, monitor_broker, open_view, pump
from fedmq.coordinator.monitor.view import ago, summary_line
from fedmq.shared.identities import DASHBOARD
from fedmq.shared.logs import add_log_format
from fedmq.shared.topicmap import load_topic_map


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
