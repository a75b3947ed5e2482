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


def test_a_restarted_coordinator_waits_for_its_named_nodes(tmp_path, caplog):
    tm, driver, root, published = _driver(tmp_path)
    driver.presence.on_status((), "b", Status("b", "offline").encode(), "fedmq/v1/f/_status/b")
    driver.state.rounds_done = driver.state.model_version = 3  # as loaded from a checkpoint
    driver.tm.policy = type(tm.policy)(**{**tm.policy.__dict__, "min_nodes": 1})
    driver.last_wait_log = -1e9
    driver.tick(0)
    assert root.current is None  # one of two named nodes online: wait, as on a first start
    # and it says what it waits for (not "1 online, 1 needed", which reads as a contradiction)
    assert "1 of the 2 named nodes ready; the first round starts once all are" in caplog.text
    driver.presence.on_status((), "b", Status("b", "online").encode(), "fedmq/v1/f/_status/b")
    driver.tick(0)
    assert root.current is not None and root.current.ctl.round == 4 and root.current.ctl.selected == ["a", "b"]


MAP_GROUPS = """
federation: f
model: {kind: softmax_regression, features: 3, classes: [0, 1]}
rounds: {deadline_s: 30}
tree:
  groups:
    g1: {nodes: [a]}
    g2: {nodes: [b]}
"""


def test_an_old_close_echo_does_not_overwrite_a_groups_retained_start():
    import time

    from fedmq.shared.messages import Control, TrainParams

    tm = parse_topic_map(MAP_GROUPS)
    retained = {}
    rejections = Rejections(logging.getLogger("test"))
    group = GroupAggregator(tm, tm.groups()[("g1",)], Membership(tm), lambda t, p, r: retained.__setitem__(t, p),
                            rejections)

    def start(n):
        return Control("start", n, attempt=100 + n, model_version=n - 1, deadline_at=time.time() + 30,
                       selected=["a", "b"], train=TrainParams(1, 8, 0.1))

    group.start(start(1))
    group.relay_close(Control("close", 1, attempt=101, outcome="applied"))
    group.start(start(2))
    group.relay_close(Control("close", 1, attempt=101, outcome="applied"))  # the broker's copy, late
    assert Control.decode(retained["fedmq/v1/f/g1/_control"]).type == "start"
    group.relay_close(Control("done", 2))
    assert Control.decode(retained["fedmq/v1/f/g1/_control"]).type == "done"


def test_a_group_with_no_selected_node_sends_no_partial():
    import time

    from fedmq.shared.messages import Control, TrainParams

    tm = parse_topic_map(MAP_GROUPS)
    sent = []
    group = GroupAggregator(tm, tm.groups()[("g2",)], Membership(tm), lambda t, p, r: sent.append(t),
                            Rejections(logging.getLogger("test")))
    group.start(Control("start", 1, attempt=5, model_version=0, deadline_at=time.time() + 30, selected=["a"],
                        train=TrainParams(1, 8, 0.1)))
    assert not [t for t in sent if "_partial" in t]  # it closed at once, and owes the root nothing


def test_rejections_before_a_round_starts_appear_in_its_summary(tmp_path):
    tm, driver, root, published = _driver(tmp_path)
    driver.rejections.reject("malformed", "fedmq/v1/f/_update/a", "between rounds")
    driver.tick(0)
    ctl = root.current.ctl
    _answer(tm, root, ctl, {k: v + 0.1 for k, v in initial_weights(tm.model).items()})
    assert driver.state.history[-1]["rejected"] == {"malformed": 1}
