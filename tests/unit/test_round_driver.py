"""The round driver never leaves a round applied but unpublished, and hands statistics rounds to scaling."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedmq.coordinator import rounds
from fedmq.coordinator.group import GroupAggregator
from fedmq.coordinator.presence import Presence
from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.rounds import FederationFailed, RoundDriver
from fedmq.coordinator.tree import Membership
from fedmq.shared.envelope import Envelope, Kind, encode
from fedmq.shared.messages import Status
from fedmq.shared.models import initial_weights
from fedmq.shared.scaling import local_stats
from fedmq.shared.topicmap import parse_topic_map

MAP = """
federation: f
model: {{kind: softmax_regression, features: 3, classes: [0, 1]}}
rounds: {{deadline_s: 30, min_nodes: 2, quorum: 1.0}}
evaluation: {{kind: npz, path: {eval}}}
scaling: {scaling}
tree:
  nodes: [a, b]
"""


def _driver(tmp_path, scaling="none"):
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, y=np.arange(20) % 2)
    tm = parse_topic_map(MAP.format(eval=tmp_path / "eval.npz", scaling=scaling))
    published = []
    rejections = Rejections(logging.getLogger("test"))
    membership = Membership(tm)
    presence = Presence(membership, rejections)
    for n in ("a", "b"):
        presence.on_status((), n, Status(n, "online", samples=10).encode(), f"fedmq/v1/f/_status/{n}")
    root = GroupAggregator(tm, tm.root, membership, lambda t, p, r: published.append(t), rejections)
    driver = RoundDriver(tm, root, presence, lambda t, p, r: published.append(t), rejections)
    driver.begin()
    return tm, driver, root, published


def _answer(tm, root, ctl, tensors):
    for n in ctl.selected:
        env = Envelope(Kind.UPDATE, "f", ctl.round, n, ctl.model_version, tensors, samples=10, attempt=ctl.attempt)
        root.on_update(n, encode(env), f"fedmq/v1/f/_update/{n}")


def test_a_failed_evaluation_applies_nothing_and_stops(tmp_path, monkeypatch):
    tm, driver, root, published = _driver(tmp_path)
    driver.tick(0)
    ctl = root.current.ctl
    monkeypatch.setattr(rounds, "evaluate", lambda *a: (_ for _ in ()).throw(ValueError("boom")))
    before = list(published)
    with pytest.raises(FederationFailed, match="nothing was applied"):
        _answer(tm, root, ctl, {k: v + 1 for k, v in initial_weights(tm.model).items()})
    assert driver.state.rounds_done == 0 and driver.state.model_version == 0 and not driver.state.history
    assert "fedmq/v1/f/_metrics" not in published[len(before):]
    assert "fedmq/v1/f/_model" not in published[len(before):]


def test_a_statistics_round_comes_first_and_sets_the_scaling(tmp_path):
    tm, driver, root, published = _driver(tmp_path, scaling="federated")
    driver.tick(0)
    ctl = root.current.ctl
    assert ctl.task == "stats"
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    _answer(tm, root, ctl, local_stats(x))
    assert driver.scaling is not None and np.allclose(driver.scaling.mean, x.mean(0))
    assert np.allclose(driver.scaling.scale, x.std(0))
    assert driver.state.rounds_done == 0 and driver.state.model_version == 0  # nothing trained yet: no refold
    driver.tick(0)
    assert root.current.ctl.task == "train" and root.current.ctl.round == 1
