"""HierFAVG (Liu et al. 2020): a group that runs several aggregations of its own per round of its parent.

For ``strategy.edge_rounds[d - 1] = E > 1`` a group at depth ``d`` splits each parent round into E edge
rounds. Edge round 1 trains from the parent's model; after each edge round but the last the group averages
what came in into its own model, publishes it (retained) on ``<group>/_model`` and starts the next edge
round from it. After the last, it sends its parent one partial: its final model weighted by the samples
behind it (or, when updates are changes, the change from the parent's model), like one big node.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from fedmq.coordinator.aggregate import MetricSums, WeightedSum
from fedmq.coordinator.group import GroupAggregator, GroupResult, Publish
from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.tree import Membership
from fedmq.shared.envelope import Envelope, Kind
from fedmq.shared.messages import Control
from fedmq.shared.signing import Auth, seal
from fedmq.shared.topicmap import Group, TopicMap

ModelKey = Tuple[Tuple[str, ...], int]  # (group path, () for the global model; version)


class ScheduledGroup(GroupAggregator):
    """A group that runs ``edge_rounds`` aggregations per round of its parent."""

    def __init__(self, tm: TopicMap, group: Group, membership: Membership, publish: Publish, rejections: Rejections,
                 *, edge_rounds: int, auth: Optional[Auth] = None, worker: int = 0,
                 log: Optional[logging.Logger] = None) -> None:
        super().__init__(tm, group, membership, publish, rejections, auth=auth, worker=worker, log=log)
        self.edge_rounds = edge_rounds
        self.models: Dict[ModelKey, Dict[str, np.ndarray]] = {}
        self.parent: Optional[Control] = None
        self.parent_key: Optional[tuple] = None
        self.step = 0
        self.start_model: Optional[Dict[str, np.ndarray]] = None  # the parent's model this round began from
        self.model: Optional[Dict[str, np.ndarray]] = None  # this group's model during the round
        self.contributors: List[str] = []
        self.bytes_up = 0.0
        self.weight = 0.0  # samples behind this group's model

    def set_model(self, version: int, tensors: Dict[str, np.ndarray]) -> None:
        """The global model: one of the models a round may start from."""
        super().set_model(version, tensors)
        self.set_group_model((), version, tensors)

    def set_group_model(self, path: Tuple[str, ...], version: int, tensors: Dict[str, np.ndarray]) -> None:
        """A model published by the root or by an ancestor group (the two newest of each are kept)."""
        self.models[(path, version)] = tensors
        versions = sorted(v for p, v in self.models if p == path)
        for v in versions[:-2]:
            del self.models[(path, v)]

    def start(self, parent: Control) -> None:
        """A round of the parent: run ``edge_rounds`` edge rounds within its deadline."""
        key = (parent.round, parent.attempt, parent.model_version, tuple(parent.model_group or ()))
        if parent.type != "start" or key == self.parent_key:
            return
        if parent.task == "stats":  # statistics are gathered once, not per edge round
            self.parent_key, self.parent = key, None
            super().start(parent)
            return
        self.parent_key, self.parent, self.step = key, parent, 0
        self.start_model = self.models.get((tuple(parent.model_group or ()), parent.model_version))
        self.model, self.contributors, self.bytes_up, self.weight = self.start_model, [], 0.0, 0.0
        self._edge_round(parent.model_group, parent.model_version)

    def _edge_round(self, model_group: Optional[List[str]], version: int) -> None:
        parent = self.parent
        assert parent is not None
        margin = self.tm.policy.hop_margin_s
        now = time.time()
        close_at = now + (parent.deadline_at - margin - now) / (self.edge_rounds - self.step)
        if self.model is not None:
            self.reference = self.model  # norm bounds and clipping measure from what the nodes train from
        super().start(Control(type="start", round=parent.round, attempt=parent.attempt, model_version=version,
                              deadline_at=close_at + margin, selected=parent.selected, train=parent.train,
                              model_group=model_group, secure=parent.secure, bounds=parent.bounds))

    def relay_close(self, parent: Control) -> None:
        """The parent closed its round: stop the edge rounds too."""
        if self.parent is not None and (self.parent.round, self.parent.attempt) == (parent.round, parent.attempt):
            self.parent = None
        super().relay_close(parent)

    def _closed(self, ctl: Control, result: GroupResult) -> None:
        """An edge round closed: average it into this group's model, then start the next edge round, or
        report the group's model to the parent after the last."""
        if ctl.task == "stats":
            super()._closed(ctl, result)
            return
        parent = self.parent
        if parent is None:
            return  # the parent gave up on the round meanwhile
        self.bytes_up += result.bytes_up
        self.contributors.extend(n for n in result.nodes if n not in self.contributors)
        if result.sums.weight > 0:
            mean = result.sums.finish(None)
            if self.tm.compression.update.delta:
                if self.model is None:
                    self.log.error("round %d: the model this edge round started from never arrived; "
                                   "dropping its updates", ctl.round)
                else:
                    self.model = {k: self.model[k] + mean[k] for k in mean}
            else:
                self.model = mean
            self.weight = result.sums.weight
        self.step += 1
        if self.step < self.edge_rounds and time.time() < parent.deadline_at - self.tm.policy.hop_margin_s:
            if self.model is not None and result.sums.weight > 0:
                version = self._publish_model(ctl)
                self._edge_round(list(self.group.path), version)
            else:  # nothing new: train again from the same model
                self._edge_round(ctl.model_group, ctl.model_version)
            return
        self.parent = None
        self._report(parent, result.metrics)

    def _publish_model(self, ctl: Control) -> int:
        assert self.model is not None
        version = int(time.time() * 1000)  # increasing, also across restarts: nodes refuse older versions
        tensors = {k: v.astype(np.float32) for k, v in self.model.items()}
        env = Envelope(kind=Kind.MODEL, federation=self.tm.federation, round=ctl.round, attempt=ctl.attempt,
                       sender=self.group.name, model_version=version, tensors=tensors,
                       meta={"model": self.tm.model.to_meta(), "edge_round": self.step + 1})
        self.publish(self.topics.group_model(self.group.path), seal(env, self.auth), True)
        self.set_group_model(self.group.path, version, self.model)
        return version

    def _report(self, parent: Control, metrics: MetricSums) -> None:
        """The partial for the parent's round: this group's model as one weighted update."""
        sums = WeightedSum()
        if self.contributors and self.model is not None:
            if self.tm.compression.update.delta:
                if self.start_model is None:
                    self.log.error("round %d: no start model to measure the change from; reporting nothing",
                                   parent.round)
                    self.contributors = []
                else:
                    sums.add({k: v - self.start_model[k] for k, v in self.model.items()}, self.weight)
            else:
                sums.add(self.model, self.weight)
        self.log.info(
            "round %d: %d edge rounds done, reporting %d nodes", parent.round, self.step, len(self.contributors)
        )
        self._send_partial(
            parent,
            GroupResult(
                sums=sums, nodes=self.contributors if sums.sums else [], metrics=metrics, bytes_up=self.bytes_up
            ),
        )
