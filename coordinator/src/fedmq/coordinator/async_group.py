"""One group's part of asynchronous (FedBuff) aggregation: no rounds; every change that arrives is weighted
by its staleness and buffered; the root applies the buffer's mean once it holds ``buffer_size`` changes,
an edge group forwards its buffer to its parent every ``flush_s`` seconds.

Buffers hold sums of *changes* (update minus the model it was trained from), so changes trained from
different model versions add up. Memory stays O(model size) for the buffer plus, when nodes send whole
weights, the ``max_staleness + 1`` newest models needed to turn them into changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from fedmq.coordinator.aggregate import MetricSums, WeightedSum
from fedmq.coordinator.group import GroupAggregator, GroupResult, Publish
from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.strategy.bounds import Bounds
from fedmq.coordinator.strategy.clipping import clip_update
from fedmq.coordinator.tree import Membership
from fedmq.shared import codecs
from fedmq.shared.envelope import Envelope, Kind
from fedmq.shared.messages import Control
from fedmq.shared.signing import Auth
from fedmq.shared.topicmap import Group, TopicMap


def staleness_weight(staleness: int, exponent: float) -> float:
    """FedBuff's polynomial discount ``(1 + staleness) ** -exponent``."""
    return float((1.0 + staleness) ** -exponent)


@dataclass
class _Buffer:
    sums: WeightedSum = field(default_factory=WeightedSum)
    metrics: MetricSums = field(default_factory=MetricSums)
    nodes: List[str] = field(default_factory=list)  # one entry per buffered change (a node may appear twice)
    bytes_up: float = 0.0
    first_at: float = 0.0


class AsyncGroup(GroupAggregator):
    """Buffers staleness-weighted changes for one group in async mode (same checks as a round's group)."""

    def __init__(self, tm: TopicMap, group: Group, membership: Membership, publish: Publish, rejections: Rejections,
                 *, auth: Optional[Auth] = None, worker: int = 0, log: Optional[logging.Logger] = None) -> None:
        super().__init__(tm, group, membership, publish, rejections, auth=auth, worker=worker, log=log)
        self.settings = self.tm.strategy.asynchronous
        self.session: Optional[Control] = None
        self.buffer = _Buffer()
        self.models: Dict[int, Dict[str, np.ndarray]] = {}  # version -> model, for updates sent as weights
        self.seen: Set[Tuple[str, int]] = set()  # (node, model version trained from): one change each
        self._partial_codec = codecs.Codec(delta=True)  # buffers are always changes

    def set_model(self, version: int, tensors: Dict[str, np.ndarray]) -> None:
        """Keep the newest ``max_staleness + 1`` models; forget what is now too stale."""
        super().set_model(version, tensors)
        self.models[version] = tensors
        oldest = version - self.settings.max_staleness
        self.models = {v: m for v, m in self.models.items() if v >= oldest}
        self.seen = {(n, v) for n, v in self.seen if v >= oldest}

    def start(self, parent: Control) -> None:
        """Join the parent's async session (once) and relay it to this group's nodes and children."""
        if parent.type != "async" or (self.session is not None and self.session.attempt == parent.attempt):
            return
        if self.session is not None:
            self.log.info("async session %d replaced by %d", self.session.attempt, parent.attempt)
        self.session = parent
        self.buffer = _Buffer()
        self.publish(self.topics.control(self.group.path), parent.encode(), True)

    def relay_close(self, parent: Control) -> None:
        """A 'done' from the parent ends the session here too: what is still buffered has no model to go to."""
        if parent.type == "done":
            self.session = None
            self.buffer = _Buffer()
        self.publish(self.topics.control(self.group.path), parent.encode(), True)

    def tick(self, now: float) -> None:
        """Forward an edge group's buffer once its oldest change has waited ``flush_s``."""
        if not self.is_root and self.buffer.nodes and now >= self.buffer.first_at + self.settings.flush_s:
            self._flush()

    def next_deadline(self) -> Optional[float]:
        """When ``tick`` will next have work."""
        if self.is_root or not self.buffer.nodes:
            return None
        return self.buffer.first_at + self.settings.flush_s

    def node_offline(self, node: str) -> None:
        """Nothing waits for a node in async mode."""

    def _session_env(self, payload: bytes, topic: str, kind: Kind, sender: str) -> Optional[Envelope]:
        env = self._open(payload, topic, kind, sender)
        if env is None:
            return None
        s = self.session
        stale = self.model_version - env.model_version
        if self._refused(topic, [
            (s is None or env.attempt != s.attempt, "stale round",
             f"session {env.attempt}; " + (f"open is {s.attempt}" if s else "no async session is open")),
            (stale > self.settings.max_staleness, "too stale",
             f"trained from model version {env.model_version}, {stale} behind {self.model_version} "
             f"(strategy.async.max_staleness {self.settings.max_staleness})"),
        ]):
            return None
        return env if self._first_time(payload, topic, sender) else None

    def on_update(self, node: str, payload: bytes, topic: str) -> None:
        """A node's change: check it, weight it by its staleness, buffer it."""
        if self._refused(topic, [(self.membership.group_path(node) != self.group.path, "unknown node",
                                  f"{node!r} is not a member of group {self.label}")]):
            return
        env = self._session_env(payload, topic, Kind.UPDATE, node)
        if env is None:
            return
        codec, limits, bound = self.tm.compression.update, self.tm.limits, self.tm.strategy.clip
        tensors, reason, detail = self._tensors(env, codec, self.shapes)
        base = None if codec.delta else self.models.get(env.model_version)
        if tensors is not None and base is None and not codec.delta:
            tensors, reason, detail = None, "unknown model version", \
                f"no model {env.model_version} here (have {sorted(self.models)})"
        measured = tensors is not None and (limits.max_update_norm is not None or bound is not None)
        # measured only when something bounds it: a per-message cost
        norm = codecs.norm(tensors, base) if measured and tensors is not None else 0.0
        if self._refused(topic, [
            ((node, env.model_version) in self.seen, "duplicate",
             f"{node} already sent a change trained from model version {env.model_version}"),
            *self._update_checks(env, tensors, reason, detail, norm),
        ]):
            return
        assert tensors is not None
        self.seen.add((node, env.model_version))
        if bound is not None:
            tensors = clip_update(tensors, base, bound, norm)
        if base is not None:
            tensors = {k: v - base[k] for k, v in codecs.to_dense(tensors, np.float64).items()}
        staleness = max(0, self.model_version - env.model_version)
        b = self._buffer()
        cap = Bounds.from_wire(self.session.bounds if self.session else None).weight
        samples = env.samples if cap is None else min(env.samples, cap)
        b.sums.add(tensors, samples * staleness_weight(staleness, self.settings.staleness_exponent))
        b.nodes.append(node)
        b.metrics.add({k: v for k, v in env.metrics.items() if k != "bytes_in"}, env.samples)
        b.metrics.merge({"staleness": float(staleness), "clipped": float(bound is not None and norm > bound),
                         "bytes_update": float(len(payload)),
                         "bytes_update_tensors": float(sum(t.nbytes for t in env.tensors.values()))}, {})
        b.bytes_up += len(payload)
        self._maybe_flush()

    def on_partial(self, child: str, payload: bytes, topic: str) -> None:
        """A child group's buffer: already weighted changes; add them to ours."""
        env = self._session_env(payload, topic, Kind.PARTIAL, child)
        if env is None:
            return
        nodes = env.meta.get("nodes", [])
        child_path = self.group.path + (child,)
        tensors, reason, detail = self._tensors(env, self._partial_codec, self.shapes)
        if self._refused(
            topic,
            [
                (
                    child not in {c.name for c in self.group.children},
                    "unexpected partial",
                    f"{child!r} is not a child group",
                ),
                (
                    not isinstance(nodes, list)
                    or not nodes
                    or not all(isinstance(n, str) and self.membership.in_subtree(n, child_path) for n in nodes),
                    "bad node list",
                    "nodes must be members of the child group, one per buffered change",
                ),
                (tensors is None, reason, detail),
            ],
        ):
            return
        b = self._buffer()
        b.nodes.extend(nodes)
        b.sums.merge(env.tensors, env.samples)
        b.metrics.merge_wire({k: v for k, v in env.metrics.items() if k != "bytes_up"})
        b.bytes_up += len(payload) + env.metrics.get("bytes_up", 0.0)
        self._maybe_flush()

    def _buffer(self) -> _Buffer:
        if not self.buffer.nodes:
            self.buffer.first_at = time.time()
        return self.buffer

    def _maybe_flush(self) -> None:
        if len(self.buffer.nodes) >= self.settings.buffer_size:
            self._flush()

    def _flush(self) -> None:
        b, s = self.buffer, self.session
        self.buffer = _Buffer()
        if s is None:  # the session ended (done) while changes were buffered: nothing takes them any more
            return
        result = GroupResult(sums=b.sums, nodes=b.nodes, metrics=b.metrics, bytes_up=b.bytes_up)
        for observe in self.observers:
            observe(self.group.path, s, result)
        if self.is_root:
            assert self.on_root_close is not None
            self.on_root_close(s, result)
            return
        self.log.debug("forwarding %d buffered changes", len(b.nodes))
        version = max(0, self.model_version)  # the newest model this group knew: the parent checks staleness by it
        self._send_partial(replace(s, round=version, model_version=version), result)
