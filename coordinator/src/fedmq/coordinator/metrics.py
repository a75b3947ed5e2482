"""Prometheus metrics of a coordinator or edge-aggregator process (``metrics.address`` in the topic map, or
``--metrics HOST:PORT``; off by default).

Fed by what the process does anyway: every group close (updates accepted, per group), every rejection (by
reason, and per group for updates), every applied round's summary (rounds, duration, bytes, model version,
accuracy and loss with where they were measured, epsilon), secure-aggregation dropouts, and, when scraped,
the nodes online per group and the checkpoint's age. Label sets are bounded: groups come from the topic map
and reasons from a fixed vocabulary; per-node series only with ``metrics.per_node: true``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from fedmq.coordinator.group import GroupResult
from fedmq.coordinator.rejections import REASONS
from fedmq.coordinator.tree import Membership
from fedmq.shared import PROTOCOL_REVISION, __version__
from fedmq.shared.data import READING_DROP_REASONS
from fedmq.shared.messages import Control
from fedmq.shared.topicmap import TopicMap
from fedmq.shared.topicmap.loader import address_problem
from fedmq.shared.topics import Topics

log = logging.getLogger("fedmq.metrics")
ROW_KINDS = ("dropped", "unlabelled")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def group_label(path: Sequence[str]) -> str:
    """A group's label value: its path, ``/`` for the root."""
    return "/".join(path) or "/"


class ProcessMetrics:
    """The metrics of one process, in their own registry (a test may run several processes' worth)."""

    def __init__(self, tm: TopicMap, membership: Membership, groups: Sequence[Tuple[str, ...]], *,
                 per_node: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

        disable_created_metrics()  # no <counter>_created series beside every counter

        self.tm, self.membership, self.per_node = tm, membership, per_node
        self.topics = Topics(tm.federation, tm.broker.topic_prefix)
        self.groups = [group_label(p) for p in groups]
        self.registry = r = CollectorRegistry(auto_describe=True)
        fed: Dict[str, Any] = {"labelnames": ["federation"], "registry": r}
        self.rounds_applied = Counter("fedmq_rounds_applied", "Rounds (async: model versions) applied", **fed)
        self.round_duration = Histogram("fedmq_round_duration_seconds", "From a round's start to its model applied",
                                        buckets=DURATION_BUCKETS, **fed)
        self.round = Gauge("fedmq_round", "The last round applied", **fed)
        self.rounds_target = Gauge("fedmq_rounds_target", "Rounds the federation runs (rounds.rounds)", **fed)
        self.model_version = Gauge("fedmq_model_version", "Version of the global model", **fed)
        quality: Dict[str, Any] = {"labelnames": ["federation", "source"], "registry": r}
        self.accuracy = Gauge("fedmq_model_accuracy_ratio", "Accuracy (r2 for regressors) of the global model; "
                              "source: held_out (the evaluation set) or node_training_data (the nodes' own data "
                              "before training)", **quality)
        self.loss = Gauge("fedmq_model_loss", "Loss of the global model (source as for accuracy)", **quality)
        per_group: Dict[str, Any] = {"labelnames": ["federation", "group"], "registry": r}
        self.received = Counter("fedmq_updates_received", "Updates that reached the group's aggregator", **per_group)
        self.accepted = Counter("fedmq_updates_accepted", "Updates counted in the group's aggregate", **per_group)
        self.online = Gauge("fedmq_nodes_online", "Nodes whose retained status is online", **per_group)
        self.stream_rows = Gauge("fedmq_stream_rows", "Rows the group's online nodes' live streams dropped (a period "
                                 "without every input) or kept unlabelled, as their statuses report",
                                 labelnames=["federation", "group", "kind"], registry=r)
        self.readings_dropped = Gauge("fedmq_stream_readings_dropped", "Sensor readings the group's online nodes "
                                      "dropped, by reason, as their statuses report",
                                      labelnames=["federation", "group", "reason"], registry=r)
        self.rejected = Counter("fedmq_messages_rejected", "Messages refused, by reason",
                                labelnames=["federation", "reason"], registry=r)
        self.bytes_up = Counter("fedmq_update_bytes", "Bytes of updates and partials received", **fed)
        self.bytes_down = Counter("fedmq_model_bytes", "Bytes of models and controls the nodes report receiving", **fed)
        self.dropouts = Counter("fedmq_secure_aggregation_dropouts", "Nodes that dropped out of a secure "
                                "aggregation after sharing their keys", **fed)
        self.epsilon = Gauge("fedmq_dp_epsilon", "Differential privacy spent so far (epsilon at the configured delta)",
                             **fed)
        self.checkpoint_age = Gauge("fedmq_checkpoint_age_seconds", "Seconds since the last checkpoint was written",
                                    **fed)
        self.node_rounds = Counter("fedmq_node_updates_accepted", "Updates of a node counted at the root",
                                   labelnames=["federation", "node"], registry=r) if per_node else None
        self.f = tm.federation
        self.rounds_target.labels(self.f).set(tm.policy.rounds)
        Info("fedmq_build", "fedmq's version and protocol revision", registry=r).info(
            {"version": __version__, "protocol": PROTOCOL_REVISION})
        for reason in REASONS:  # a fixed vocabulary: every series from 0, so rates and alerts see the first one
            self.rejected.labels(self.f, reason)
        for metric in (self.rounds_applied, self.round_duration, self.round, self.model_version, self.bytes_up,
                       self.bytes_down, self.dropouts):
            metric.labels(self.f)
        for g in self.groups:  # every series exists from the start (a rate over a missing series is empty)
            self.received.labels(self.f, g)
            self.accepted.labels(self.f, g)
            self.online.labels(self.f, g)
        self.last_checkpoint: Optional[float] = None
        self.checkpoint_age.labels(self.f).set_function(
            lambda: time.time() - self.last_checkpoint if self.last_checkpoint is not None else float("nan"))
        self._online_source: Callable[[], List[str]] = lambda: []
        self._data_source: Callable[[str], Dict[str, Any]] = lambda node: {}
        self._refreshed = -float("inf")
        self.server: Any = None

    # --- what the process reports --------------------------------------------------------------------

    def group_closed(self, path: Tuple[str, ...], ctl: Control, result: GroupResult) -> None:
        """Group ``path`` closed a round (or an async buffer) with ``result.nodes`` counted in: its own nodes
        count here (its children's were counted where they arrived)."""
        if ctl.task == "stats":
            return
        label = group_label(path)
        own = sum(1 for node in result.nodes if self.membership.group_path(node) == path)
        self.received.labels(self.f, label).inc(own)
        self.accepted.labels(self.f, label).inc(own)
        if path == ():  # the root's result holds every group's nodes and sums
            self.dropouts.labels(self.f).inc(result.metrics.sums.get("secagg_dropped", 0.0))
            if self.node_rounds is not None:
                for node in result.nodes:
                    self.node_rounds.labels(self.f, node).inc()

    def rejected_message(self, reason: str, topic: str) -> None:
        """A refused message; an update also counts as received by its group."""
        self.rejected.labels(self.f, reason).inc()
        parsed = self.topics.parse_last(topic, "update")
        if parsed is not None and group_label(parsed[0]) in self.groups:
            self.received.labels(self.f, group_label(parsed[0])).inc()

    def round_applied(self, summary: Dict[str, Any]) -> None:
        """An applied round's summary (the root only)."""
        f = self.f
        self.rounds_applied.labels(f).inc()
        self.round.labels(f).set(summary["round"])
        self.round_duration.labels(f).observe(summary.get("seconds", 0.0))
        self.model_version.labels(f).set(summary.get("model_version", 0))
        source = summary.get("accuracy_source", "node_training_data")
        if summary.get("accuracy") is not None:
            self.accuracy.labels(f, source).set(summary["accuracy"])
        if summary.get("loss") is not None:
            self.loss.labels(f, source).set(summary["loss"])
        self.bytes_up.labels(f).inc(summary.get("bytes_up", 0))
        self.bytes_down.labels(f).inc(summary.get("bytes_down", 0))
        if "epsilon" in summary:
            self.epsilon.labels(f).set(summary["epsilon"])

    def checkpoint_written(self, at: Optional[float] = None) -> None:
        """A checkpoint was written (now, or at ``at``)."""
        self.last_checkpoint = time.time() if at is None else at

    def watch_presence(self, online: Callable[[], List[str]],
                       data: Optional[Callable[[str], Dict[str, Any]]] = None) -> None:
        """Where the nodes online come from, and what each one's stream dropped (read on ``refresh``, in the
        process's own thread)."""
        self._online_source = online
        self._data_source = data or (lambda node: {})

    def refresh(self) -> None:
        """Update the gauges that follow state (nodes online per group), at most once a second; called from
        the service loop (the presence table is not read from the HTTP thread)."""
        if time.monotonic() - self._refreshed < 1.0:
            return
        self._refreshed = time.monotonic()
        counts = {g: 0 for g in self.groups}
        rows: Dict[Tuple[str, str], int] = {(g, k): 0 for g in self.groups for k in ROW_KINDS}
        reasons = (*READING_DROP_REASONS, "other")
        readings: Dict[Tuple[str, str], int] = {(g, r): 0 for g in self.groups for r in reasons}
        for node in self._online_source():
            path = self.membership.group_path(node)
            label = group_label(path) if path is not None else None
            if label not in counts:
                continue
            counts[label] += 1
            data = self._data_source(node)
            for kind in ROW_KINDS:
                rows[(label, kind)] += int(data.get(f"{kind}_rows", 0))
            for reason, n in data.get("dropped", {}).items():
                readings[(label, reason if reason in READING_DROP_REASONS else "other")] += int(n)
        for g, n in counts.items():
            self.online.labels(self.f, g).set(n)
        for (g, kind), n in rows.items():
            self.stream_rows.labels(self.f, g, kind).set(n)
        for (g, reason), n in readings.items():
            self.readings_dropped.labels(self.f, g, reason).set(n)

    # --- the endpoint ----------------------------------------------------------------------------------

    def serve(self, address: str) -> Tuple[str, int]:
        """Start the HTTP endpoint (``/metrics``) on ``host:port``; returns where it listens (port 0: any free)."""
        from prometheus_client import start_http_server

        problem = address_problem(address)
        if problem:
            raise ValueError(f"metrics address {address!r} {problem}")
        host, _, port = address.rpartition(":")
        self.server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        bound = self.server.server_address
        log.info("Prometheus metrics on http://%s:%d/metrics", bound[0], bound[1])
        return bound[0], bound[1]

    def stop(self) -> None:
        """Stop the endpoint."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
