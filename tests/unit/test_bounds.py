"""Default bounds on what one update may count (weight cap, adaptive norm bound), through the real
round driver and group aggregators of a two-level tree, routed in memory as a broker would route them."""

import logging
import time

import numpy as np
import pytest

from fedmq.coordinator.group import GroupAggregator
from fedmq.coordinator.presence import Presence
from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.rounds import RoundDriver
from fedmq.coordinator.strategy import bounds
from fedmq.coordinator.tree import Membership
from fedmq.shared.envelope import Envelope, Kind, encode
from fedmq.shared.messages import Control, MessageError, Status
from fedmq.shared.topicmap import parse_topic_map
from fedmq.shared.topics import Topics

MAP = """
federation: f
model: {kind: softmax_regression, features: 5, classes: [0, 1, 2]}
rounds: {rounds: 5, deadline_s: 30, hop_margin_s: 1, min_nodes: 1, quorum: 1.0}
tree:
  nodes: [r1, r2]
  groups:
    site: {nodes: [s1, s2, s3]}
"""
HONEST = ["r1", "r2", "s1", "s2"]


class Federation:
    """A root driver and the site's group, with an in-memory broker between them."""

    def __init__(self, text: str = MAP, claims: int = 100) -> None:
        self.tm = parse_topic_map(text)
        self.topics = Topics("f")
        membership = Membership(self.tm)
        self.rej = Rejections(logging.getLogger("test"))
        self.starts = []
        self.aggs = {}
        for g in self.tm.root.walk():
            self.aggs[g.path] = GroupAggregator(self.tm, g, membership, self.publish, self.rej)
        presence = Presence(membership, self.rej)
        for n in sorted(self.tm.root.named_nodes()):
            path = membership.group_path(n)
            presence.on_status(path, n, Status(n, "online", samples=claims).encode(), self.topics.status(path, n))
        self.driver = RoundDriver(self.tm, self.aggs[()], presence, self.publish, self.rej)
        self.driver.begin()

    def publish(self, topic, payload, retain):
        if topic == self.topics.model():
            site = self.aggs[("site",)]
            site.set_model(
                self.driver.state.model_version, {k: v.astype(np.float64) for k, v in self.driver.weights.items()}
            )
        elif topic == self.topics.control(()):
            ctl = Control.decode(payload)
            if ctl.type == "start":
                self.starts.append(ctl)
                self.aggs[("site",)].start(ctl)
        parsed = self.topics.parse_last(topic, "partial")
        if parsed:
            self.aggs[parsed[0]].on_partial(parsed[1], payload, topic)

    def round(self, change, samples):
        """Run one round: every node sends the global model plus ``change(node)``, claiming ``samples(node)``."""
        self.driver.tick(time.time())
        ctl = self.starts[-1]
        for n in ctl.selected:
            path = ("site",) if n.startswith("s") else ()
            w = {k: (v + change(n)[k]).astype(np.float32) for k, v in self.driver.weights.items()}
            env = Envelope(
                Kind.UPDATE, "f", ctl.round, n, ctl.model_version, w, samples=samples(n), attempt=ctl.attempt
            )
            self.aggs[path].on_update(n, encode(env), self.topics.update(path, n))
        assert self.aggs[()].current is None, "the round did not close"
        return ctl


def honest_changes(tm, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"coef": (3, 5), "intercept": (3,)}
    direction = {k: rng.normal(size=s) for k, s in shapes.items()}
    return {n: {k: 0.1 * direction[k] + 0.01 * rng.normal(size=s) for k, s in shapes.items()} for n in HONEST}


def distance(a, b):
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


def test_one_node_claiming_huge_counts_and_norms_cannot_set_the_model():
    fed = Federation()
    honest = honest_changes(fed.tm)
    attack = {k: -1000.0 * v for k, v in honest["r1"].items()}  # sign flip x1000
    start = {k: v.copy() for k, v in fed.driver.weights.items()}
    first = fed.round(lambda n: attack if n == "s3" else honest[n], lambda n: 1_000_000 if n == "s3" else 100)
    # Calibration round: no norm bound yet; weights capped at the median reported count (100).
    assert first.bounds == {"weight": 100.0}
    mean_change = {k: np.mean([honest[n][k] for n in HONEST], axis=0) for k in start}
    step = {k: fed.driver.weights[k] - start[k] for k in start}
    cosine = sum(np.sum(step[k] * mean_change[k]) for k in start) / (
        distance(step, {k: 0 for k in step}) * distance(mean_change, {k: 0 for k in step})
    )
    # The attacker counts as one node of median weight whose change is as long as the median: it
    # slows the honest step down but cannot turn it (unbounded, it would move the model ~1000x further).
    assert cosine > 0.9 and distance(step, {k: 0 for k in step}) < distance(mean_change, {k: 0 for k in step})
    norms = [distance(honest[n], {k: 0 for k in start}) for n in HONEST] + [1e9]
    tracked = fed.driver.state.norm_bound
    assert tracked == pytest.approx(np.median(norms), rel=1e-4)
    # Later rounds carry the tracked bound; the groups clip where updates arrive.
    second = fed.round(lambda n: attack if n == "s3" else honest[n], lambda n: 1_000_000 if n == "s3" else 100)
    assert second.bounds == {"weight": 100.0, "norm": pytest.approx(tracked)}
    summary = fed.driver.state.history[-1]
    assert summary["clipped"] >= 1 and summary["bounds"]["weight"] == 100.0
    assert not fed.rej.total, fed.rej.total


def test_without_bounds_the_same_attacker_sets_the_model():
    fed = Federation(MAP + "strategy: {clip_norm: none, weight_cap: none}\n")
    honest = honest_changes(fed.tm)
    attack = {k: -1000.0 * v for k, v in honest["r1"].items()}
    start = {k: v.copy() for k, v in fed.driver.weights.items()}
    ctl = fed.round(lambda n: attack if n == "s3" else honest[n], lambda n: 1_000_000 if n == "s3" else 100)
    assert ctl.bounds is None
    assert distance(fed.driver.weights, start) > 50  # the attacker's change, nearly unweighted by the others


def test_fixed_bounds_and_a_checkpointed_adaptive_bound(tmp_path):
    fed = Federation(MAP + "strategy: {clip_norm: 0.05, weight_cap: 150}\n")
    honest = honest_changes(fed.tm)
    ctl = fed.round(lambda n: honest.get(n, honest["r1"]), lambda n: 100)
    assert ctl.bounds == {"weight": 150.0} and fed.driver.state.history[-1]["clipped"] == 5
    text = MAP.replace("tree:", f"checkpoint: {{dir: {tmp_path}}}\ntree:")
    fed = Federation(text)
    fed.round(lambda n: honest.get(n, honest["r1"]), lambda n: 100)
    bound = fed.driver.state.norm_bound
    assert bound is not None
    again = Federation(text)  # a restarted coordinator goes on with the tracked bound: no second calibration
    assert again.driver.state.norm_bound == bound
    assert again.round(lambda n: honest.get(n, honest["r1"]), lambda n: 100).bounds["norm"] == bound


def test_start_bounds_are_validated():
    ctl = Control(
        "start",
        1,
        deadline_at=1.0,
        selected=["a"],
        bounds={"weight": 2.0, "norm": 0.5},
        train=__import__("fedmq.shared.messages", fromlist=["TrainParams"]).TrainParams(1, 8, 0.1),
    )
    assert Control.decode(ctl.encode()).bounds == {"weight": 2.0, "norm": 0.5}
    for bad in ({"weight": -1}, {"norm": 0}, {"weight": "x"}, {"other": 1}, [1]):
        payload = ctl.encode().replace(
            b'"bounds":{"weight":2.0,"norm":0.5}', f'"bounds":{__import__("json").dumps(bad)}'.encode()
        )
        with pytest.raises(MessageError):
            Control.decode(payload)


def test_weight_cap_is_a_multiple_of_the_median_reported_count():
    tm = parse_topic_map(MAP)
    assert bounds.weight_cap(tm.strategy, [100, 100, 120, 1_000_000, 0]) == 110
    assert bounds.weight_cap(tm.strategy, [0, 0]) is None
    assert bounds.next_norm_bound([1.0, 2.0, 1e9]) == 2.0 and bounds.next_norm_bound([0.0]) == bounds.MIN_NORM
    assert bounds.check_norms([1, 2.5], 2) == [1.0, 2.5]
    assert bounds.check_norms([1, float("nan")], 2) is None and bounds.check_norms([1], 2) is None


def test_statistics_rounds_get_a_looser_cap_and_no_norm_bound():
    tm = parse_topic_map(MAP)
    assert bounds.round_bounds(tm.strategy, [100, 100, 120], 0.5, stats=True) == bounds.Bounds(weight=1000.0)
    assert bounds.round_bounds(tm.strategy, [100, 100, 120], 0.5) == bounds.Bounds(weight=100.0, norm=0.5)
    fixed = parse_topic_map(MAP + "strategy: {weight_cap: 300}\n").strategy
    assert bounds.round_bounds(fixed, [100], None, stats=True) == bounds.Bounds(weight=300.0)


def test_fltrust_keeps_the_model_on_the_trusted_course_under_flipped_inflated_changes(tmp_path):
    """Through the real driver: each round the coordinator trains the global model on its evaluation set and
    scores the changes by it; two of five nodes send a sign-flipped change x100 and claim a million samples."""
    from fedmq.coordinator.strategy.trusted import trusted_change
    from fedmq.coordinator.strategy.vectors import unflatten
    from fedmq.shared.messages import TrainParams

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = np.argmax(x[:, :3] + 0.1 * rng.normal(size=(300, 3)), axis=1)
    np.savez(tmp_path / "trusted.npz", x=x, y=y)
    fed = Federation(MAP + f"evaluation: {{kind: npz, path: {tmp_path / 'trusted.npz'}}}\n"
                           "strategy: {aggregator: fltrust, clip_norm: none, weight_cap: none}\n")
    start = {k: v.copy() for k, v in fed.driver.weights.items()}
    trusted = {n: None for n in ("r1", "r2", "s1", "s2", "s3")}
    for _ in range(3):  # honest nodes: the trusted change, give or take 10 %
        flat = trusted_change(fed.tm.model, fed.driver.weights, x, y, TrainParams(1, 16, 0.1), seed=1)
        good = unflatten(flat, {k: v.shape for k, v in start.items()})
        for n in trusted:
            trusted[n] = {k: v * (1 + 0.1 * rng.normal()) for k, v in good.items()}
        fed.round(lambda n: {k: -100 * v for k, v in trusted[n].items()} if n in ("s3", "r2") else trusted[n],
                  lambda n: 1_000_000 if n in ("s3", "r2") else 100)
    accuracy = fed.driver.state.history[-1]["accuracy"]
    assert accuracy > 0.8, fed.driver.state.history
    assert distance(fed.driver.weights, start) < 10  # unweighted, the flipped x100 changes would dominate


def test_what_a_child_groups_process_refused_reaches_the_roots_round_summary():
    """An edge process counts its refusals itself; its partial carries them, so the root's summary (and
    history) shows what the whole tree refused, not only what reached the root's process."""
    fed = Federation()
    fed.aggs[("site",)].rejections = Rejections(logging.getLogger("edge"))  # as in an edge process
    honest = honest_changes(fed.tm)
    fed.round(lambda n: honest.get(n, honest["r1"]), lambda n: 100)
    assert fed.driver.state.history[-1]["rejected"] == {}
    fed.aggs[("site",)].on_update("s1", b"not an envelope", fed.topics.update(("site",), "s1"))
    fed.round(lambda n: honest.get(n, honest["r1"]), lambda n: 100)
    assert fed.driver.state.history[-1]["rejected"] == {"malformed": 1}
