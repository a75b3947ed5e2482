"""What a monitor sees of a running federation, from the retained topics only (no coordinator internals):
every node's status, the open round's progress (``_round``), the last summary (``_metrics``) and the
key figures of every applied round (``_history``). ``fedmq status`` prints it; ``fedmq dashboard`` draws it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Optional

from fedmq.shared.messages import MessageError, Status, decode_history, decode_metrics
from fedmq.shared.mqtt import Message
from fedmq.shared.topicmap import TopicMap
from fedmq.shared.topics import Topics

MAX_STATE_BYTES = 1 << 16


class FederationView:
    """The federation as its retained topics describe it; ``feed`` messages in, ``snapshot`` out (thread-safe)."""

    def __init__(self, tm: TopicMap) -> None:
        self.tm = tm
        self.topics = Topics(tm.federation, tm.broker.topic_prefix)
        self.groups = sorted(tm.groups())
        self.nodes: Dict[str, Dict[str, Any]] = {}  # node -> its status fields and group
        for path, group in tm.groups().items():
            for node in group.nodes:
                self.nodes[node] = {"node": node, "group": "/".join(path), "state": "unknown"}
        self.round: Dict[str, Any] = {}
        self.last: Dict[str, Any] = {}
        self.history: List[Dict[str, Any]] = []
        self.rejected: List[str] = []  # messages this view could not read (malformed)
        self.version = 0  # bumped on every change
        self._lock = threading.Lock()

    def subscriptions(self) -> List[str]:
        """The topics a monitor reads (what the broker's ``monitor`` identity may read)."""
        return [self.topics.round_state(), self.topics.metrics(), self.topics.history(),
                *(self.topics.status_filter(p) for p in self.groups)]

    def feed(self, msg: Message) -> bool:
        """Take one message; True when the view changed."""
        try:
            with self._lock:
                changed = self._take(msg)
                if changed:
                    self.version += 1
                return changed
        except (MessageError, ValueError, UnicodeDecodeError) as exc:
            self.rejected.append(f"{msg.topic}: {exc}")
            del self.rejected[:-20]
            return False

    def _take(self, msg: Message) -> bool:
        t = self.topics
        if msg.topic == t.round_state():
            if len(msg.payload) > MAX_STATE_BYTES:
                raise MessageError("round state too large")
            state = json.loads(msg.payload)
            if not isinstance(state, dict) or state.get("v") != 1:
                raise MessageError("not a round state")
            self.round = state
            return True
        if msg.topic == t.metrics():
            self.last = decode_metrics(msg.payload)
            if not self.history or self.history[-1].get("round") != self.last["round"]:
                self.history.append({k: v for k, v in self.last.items() if not isinstance(v, (dict, list))})
            return True
        if msg.topic == t.history():
            rows = decode_history(msg.payload)
            if len(rows) >= len(self.history):
                self.history = rows
            return True
        parsed = t.parse_last(msg.topic, "status")
        if parsed is None or not msg.payload:
            return False
        status = Status.decode(msg.payload)
        if status.node != parsed[1]:
            raise MessageError(f"status names {status.node!r}")
        entry: Dict[str, Any] = {"node": status.node, "group": "/".join(parsed[0]), "state": status.state}
        if status.state == "online":
            entry.update(samples=status.samples, trainer=status.trainer, source=status.source, live=status.live,
                         problem=status.problem, last_seen=status.last_seen or None, last_round=status.last_round,
                         version=status.version, protocol=status.protocol, data=status.data)
        else:
            entry.update({k: v for k, v in self.nodes.get(status.node, {}).items()
                          if k in ("samples", "trainer", "last_seen", "last_round", "version")})
        self.nodes[status.node] = entry
        return True

    def snapshot(self) -> Dict[str, Any]:
        """Everything, as JSON-ready data: federation, groups with their nodes, round, last summary, history,
        open problems."""
        with self._lock:
            nodes = [dict(n) for n in sorted(self.nodes.values(), key=lambda n: (n["group"], n["node"]))]
            revoked = self.round.get("revoked")
            for n in nodes:  # the coordinator no longer trusts it, whatever its retained status says
                if isinstance(revoked, list) and n["node"] in revoked:
                    n["state"] = "revoked"
            return {"federation": self.tm.federation, "version": self.version, "time": round(time.time(), 3),
                    "groups": ["/".join(p) for p in self.groups], "nodes": nodes, "round": dict(self.round),
                    "last": dict(self.last), "history": list(self.history), "problems": self._problems(nodes)}

    def _problems(self, nodes: List[Dict[str, Any]]) -> List[str]:
        out = [f"{n['node']}: {n['problem']}" for n in nodes if n.get("problem") and n["state"] == "online"]
        out += [f"{n['node']}: {n['state']}" for n in nodes if n["state"] in ("offline", "revoked")]
        rejected = self.last.get("rejected")
        if isinstance(rejected, dict) and rejected:
            out.append("last round rejected " + ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items())))
        return out + [f"unreadable: {r}" for r in self.rejected[-3:]]


def summary_line(view: Dict[str, Any]) -> str:
    """``round 12 of 50: running, 4 of 6 updates in, deadline in 8 s`` and the like."""
    r = view["round"]
    total = r.get("rounds_total")
    of = f" of {total}" if total else ""
    state = r.get("state")
    if state == "done":
        return f"done: {r.get('round')}{of} rounds applied"
    if state == "waiting":
        return (f"waiting for nodes ({r.get('online', 0)} ready, {r.get('min_nodes', '?')} needed) before round "
                f"{r.get('round', 0) + 1}{of}")
    if state == "running" and r.get("mode") == "async":
        return (f"async: model version {r.get('model_version')}{of}, "
                f"{r.get('buffered')} of {r.get('buffer_size')} buffered")
    if state == "running":
        left = max(0.0, float(r.get("deadline_at", 0)) - time.time())
        task = " (feature statistics)" if r.get("task") == "stats" else ""
        return (
            f"round {r.get('round')}{of}{task}: {r.get('answered')} of {r.get('selected')} updates in, "
            f"deadline in {left:.0f} s"
        )
    return "no round state yet (is the coordinator running?)"


def ago(t: Optional[float], now: Optional[float] = None) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``; ``-`` for none."""
    if not t:
        return "-"
    d = max(0.0, (now or time.time()) - t)
    return f"{d:.0f} s ago" if d < 120 else f"{d / 60:.0f} min ago" if d < 7200 else f"{d / 3600:.0f} h ago"
