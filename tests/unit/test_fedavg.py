"""FedAvg maths, and hierarchical aggregation through real GroupAggregators equals flat FedAvg."""

import time

import numpy as np
import pytest

from fedmq.coordinator.aggregate import MetricSums, WeightedSum
from fedmq.coordinator.group import GroupAggregator
from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.tree import Membership
from fedmq.shared.envelope import Envelope, Kind, decode, encode
from fedmq.shared.messages import Control, TrainParams
from fedmq.shared.models import initial_weights
from fedmq.shared.topicmap import parse_topic_map
from fedmq.shared.topics import Topics

MAP = """
federation: f
model: {kind: softmax_regression, features: 5, classes: [0, 1, 2]}
rounds: {deadline_s: 30, hop_margin_s: 1}
strategy: {clip_norm: none, weight_cap: none}  # exact sample-weighted FedAvg, unbounded
tree:
  nodes: [r1]
  groups:
    site:
      nodes: [s1]
      groups:
        b1: {nodes: [a1, a2, a3]}
        b2: {nodes: [c1, c2]}
    home: {nodes: [h1, h2]}
"""


def random_updates(tm, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for n in tm.root.named_nodes():
        w = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in initial_weights(tm.model).items()}
        out[n] = (w, int(rng.integers(1, 500)))
    return out


def flat_fedavg(updates):
    total = sum(n for _, n in updates.values())
    names = next(iter(updates.values()))[0].keys()
    return {k: sum(w[k].astype(np.float64) * n for w, n in updates.values()) / total for k in names}


def test_weighted_sum_is_sample_weighted_mean():
    s = WeightedSum()
    s.add({"w": np.array([1.0, 2.0], np.float32)}, 1)
    s.add({"w": np.array([3.0, 6.0], np.float32)}, 3)
    np.testing.assert_allclose(s.finish(None)["w"], [2.5, 5.0])
    with pytest.raises(ValueError):
        WeightedSum().finish(None)


def test_weighted_sum_memory_does_not_grow_with_updates():
    s = WeightedSum()
    for i in range(200):
        s.add({"w": np.full(1000, i, np.float32)}, 1)
    assert len(s.sums) == 1 and s.sums["w"].nbytes == 8000
    assert s.finish(None)["w"][0] == pytest.approx(99.5)


def test_metric_sums_merge_through_wire_format():
    a, b = MetricSums(), MetricSums()
    a.add({"loss": 1.0}, 10)
    b.add({"loss": 4.0}, 30)
    a.merge_wire(b.to_wire())
    assert a.means()["loss"] == pytest.approx(3.25)


def test_hierarchical_equals_flat_through_group_aggregators():
    tm = parse_topic_map(MAP)
    topics = Topics("f")
    membership = Membership(tm)
    rejections = Rejections(__import__("logging").getLogger("test"))
    result = {}
    aggs = {}

    def publish(topic, payload, retain):
        # route what a broker would route, between the in-memory aggregators
        for path, agg in aggs.items():
            if path and topic == topics.control(path[:-1]):
                agg.start(Control.decode(payload))
        parsed = topics.parse_last(topic, "partial")
        if parsed:
            aggs[parsed[0]].on_partial(parsed[1], payload, topic)

    for g in tm.root.walk():
        aggs[g.path] = GroupAggregator(tm, g, membership, publish, rejections)
    aggs[()].on_root_close = lambda ctl, res: result.update(res=res)
    nodes = sorted(tm.root.named_nodes())
    ctl = Control("start", round=1, attempt=7, model_version=0, deadline_at=time.time() + 30, selected=nodes,
                  train=TrainParams(1, 8, 0.1))
    aggs[()].start(ctl)
    updates = random_updates(tm)
    for n, (w, samples) in updates.items():
        path = membership.group_path(n)
        env = Envelope(Kind.UPDATE, "f", 1, n, 0, w, samples=samples, attempt=7, metrics={"eval_loss": 1.0})
        aggs[path].on_update(n, encode(env), topics.update(path, n))
    assert not rejections.total, rejections.total
    res = result["res"]
    assert sorted(res.nodes) == nodes
    expected = flat_fedavg(updates)
    got = res.sums.finish(None)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6)


def test_group_rejects_bad_updates_and_counts_them():
    tm = parse_topic_map(MAP)
    topics = Topics("f")
    rej = Rejections(__import__("logging").getLogger("test"))
    sent = []
    agg = GroupAggregator(tm, tm.groups()[("home",)], Membership(tm), lambda *a: sent.append(a), rej)
    agg.start(Control("start", 1, attempt=1, model_version=0, deadline_at=time.time() + 30, selected=["h1", "h2"],
                      train=TrainParams(1, 8, 0.1)))
    good = initial_weights(tm.model)
    t = topics.update(("home",), "h1")

    def env(**kw):
        base = dict(
            kind=Kind.UPDATE, federation="f", round=1, sender="h1", model_version=0, tensors=good, samples=5, attempt=1
        )
        base.update(kw)
        return encode(Envelope(**base))

    agg.on_update("h1", env(tensors={"coef": np.zeros((2, 5), np.float32), "intercept": np.zeros(3, np.float32)}), t)
    agg.on_update("h1", env(round=0), t)
    bad = bytearray(env())
    bad[-5] ^= 1
    agg.on_update("h1", bytes(bad), t)
    agg.on_update(
        "h1", env(tensors={"coef": np.full((3, 5), np.nan, np.float32), "intercept": np.zeros(3, np.float32)}), t
    )
    agg.on_update("h1", env(samples=0), t)
    agg.on_update("stranger", env(sender="stranger"), t)
    agg.on_update("h1", env(sender="h2"), t)
    agg.on_update("h1", env(), t)
    agg.on_update("h1", env(), t)  # the same message again (a resend): dropped, not a rejection
    agg.on_update("h1", env(samples=6), t)  # a second, different answer: refused
    assert dict(rej.total) == {
        "wrong shape or dtype": 1,
        "stale round": 1,
        "bad checksum": 1,
        "NaN or Inf": 1,
        "bad sample count": 1,
        "unknown node": 1,
        "sender mismatch": 1,
        "duplicate": 1,
    }
    partials = [m for m in sent if m[0] == topics.partial((), "home")]
    assert not partials  # h2 has not answered yet
    agg.node_offline("h2")
    assert not [m for m in sent if m[0] == topics.partial((), "home")]  # it may come back before the deadline
    agg.tick(time.time() + 31)
    ((topic, payload, retain),) = [m for m in sent if m[0] == topics.partial((), "home")]
    partial = decode(payload)
    assert partial.kind == Kind.PARTIAL and partial.meta["nodes"] == ["h1"] and partial.samples == 5


SPLIT = """
federation: f
model: {kind: softmax_regression, features: 5, classes: [0, 1, 2]}
rounds: {deadline_s: 30, hop_margin_s: 1}
strategy: {clip_norm: none, weight_cap: none}
tree:
  groups:
    big: {edge: true, workers: 2, nodes: [n1, n2, n3]}
"""


def test_split_group_workers_close_together_and_the_parent_refuses_double_counting():
    tm = parse_topic_map(SPLIT)
    topics = Topics("f")
    membership = Membership(tm)
    rej = Rejections(__import__("logging").getLogger("test"))
    closed, progress, partials = {}, [], []
    root = GroupAggregator(
        tm, tm.root, membership, lambda *a: None, rej, on_root_close=lambda ctl, res: closed.update(res=res)
    )
    workers = [
        GroupAggregator(
            tm,
            tm.groups()[("big",)],
            membership,
            lambda t, p, r: (progress if "_progress" in t else partials if "_partial" in t else []).append((t, p)),
            rej,
            worker=w,
        )
        for w in (0, 1)
    ]
    ctl = Control(
        "start",
        1,
        attempt=3,
        model_version=0,
        deadline_at=time.time() + 30,
        selected=["n1", "n2", "n3"],
        train=TrainParams(1, 8, 0.1),
    )
    root.start(ctl)
    for w in workers:
        w.start(ctl)
    updates = random_updates(tm)
    share = {"n1": 0, "n2": 1, "n3": 0}  # as a shared subscription might hand them out
    for n, (w, samples) in updates.items():
        env = Envelope(Kind.UPDATE, "f", 1, n, 0, w, samples=samples, attempt=3)
        workers[share[n]].on_update(n, encode(env), topics.update(("big",), n))
    for t, p in progress:  # the workers hear each other (and themselves)
        for w in workers:
            w.on_progress(t.rsplit("/", 1)[1], p, t)
    assert [w.current for w in workers] == [None, None]  # both closed "all in"
    workers[1].on_progress("0", b"not json", topics.progress(("big",), 0))
    assert rej.total["malformed progress"] == 1
    assert len(partials) == 2
    first, second = partials
    root.on_partial("big", second[1], second[0])
    root.on_partial("big", second[1], second[0])  # the same worker again
    assert rej.total["duplicate"] == 1
    root.on_partial("big", first[1], first[0])
    res = closed["res"]
    assert sorted(res.nodes) == ["n1", "n2", "n3"]
    expected = flat_fedavg(updates)
    for k, v in res.sums.finish(None).items():
        np.testing.assert_allclose(v, expected[k], rtol=1e-6, atol=1e-6)
    # A node counted by one worker's partial must not count again in another's.
    root.start(
        Control(
            "start",
            2,
            attempt=4,
            model_version=0,
            deadline_at=time.time() + 30,
            selected=["n1", "n2", "n3"],
            train=TrainParams(1, 8, 0.1),
        )
    )
    w0 = decode(first[1])

    def forged(nodes, worker):
        """Worker 0's partial again, claiming other nodes or another worker."""
        return Envelope(Kind.PARTIAL, "f", 2, "big", 0, dict(w0.tensors), samples=w0.samples, attempt=4,
                        meta={"nodes": nodes, "worker": worker})

    overlap, again, stranger = forged(["n1"], 0), forged(["n1"], 1), forged(["n2"], 5)
    t = topics.partial((), "big")
    root.on_partial("big", encode(overlap), t)
    root.on_partial("big", encode(again), t)
    root.on_partial("big", encode(stranger), t)
    assert rej.total["bad node list"] == 1 and rej.total["unexpected partial"] == 1


def test_accumulators_hand_on_what_their_parent_merges_and_finish_to_the_mean_change():
    """A child's to_partial merged into its parent equals adding the updates there (weighted sums and stacks),
    and finish gives the weighted mean change from the reference."""
    from fedmq.coordinator.aggregate import UpdateStack

    shapes = {"w": (2,)}
    updates = [({"w": np.array([1.0, 2.0])}, 1.0), ({"w": np.array([3.0, 6.0])}, 3.0)]
    reference = {"w": np.array([1.0, 1.0], np.float32)}
    for make in (WeightedSum, lambda: UpdateStack(shapes)):
        flat, child, parent = make(), make(), make()
        for t, w in updates:
            flat.add(t, w)
            child.add(t, w)
        parent.merge(child.to_partial(), child.weight)
        assert parent.weight == flat.weight == 4.0
        np.testing.assert_allclose(parent.finish(reference)["w"], [1.5, 4.0])  # (1*[0,1] + 3*[2,5]) / 4
        np.testing.assert_allclose(flat.finish(None)["w"], [2.5, 5.0])


def test_private_mean_divides_by_the_number_selected_and_noises_only_in_central_mode():
    from fedmq.coordinator.private_mean import PrivateMean
    from fedmq.shared.topicmap import Privacy

    local = PrivateMean(Privacy(mode="local", clip_norm=1.0), selected=4, shapes={"w": (2,)})
    local.add({"w": np.array([1.0, 1.0])}, 1.0)
    local.add({"w": np.array([3.0, 1.0])}, 1.0)
    np.testing.assert_allclose(local.finish(None)["w"], [1.0, 0.5])  # two answered, four selected
    central = PrivateMean(Privacy(mode="central", clip_norm=1.0, noise_multiplier=1.0), selected=4,
                          shapes={"w": (10_000,)})
    central.add({"w": np.zeros(10_000)}, 1.0)
    assert np.std(central.finish(None)["w"]) == pytest.approx(0.25, rel=0.05)  # N(0, 1) over 4


ASYNC = """\
federation: f
model: {kind: softmax_regression, features: 2, classes: [0, 1]}
strategy: {mode: async, clip_norm: 5.0, async: {buffer_size: 10, flush_s: 0.5}}
tree:
  groups:
    home: {nodes: [n1, n2]}
"""


def test_an_async_group_drops_its_buffer_when_the_session_ends_instead_of_failing():
    """The federation's last 'done' can reach a group holding changes not yet forwarded: they have no model to
    go to, and forwarding them must not take the coordinator down."""
    from fedmq.coordinator.async_group import AsyncGroup

    tm = parse_topic_map(ASYNC)
    sent = []
    group = AsyncGroup(tm, tm.groups()[("home",)], Membership(tm), lambda t, p, r: sent.append(t),
                       Rejections(__import__("logging").getLogger("test")))
    group.start(Control(type="async", round=0, attempt=1, model_version=0, train=TrainParams(1, 8, 0.1)))
    group.buffer.nodes.append("n1")  # a change buffered, waiting for flush_s
    group.buffer.first_at = time.time() - 10
    group.relay_close(Control(type="done", round=3, attempt=1))
    group.tick(time.time())
    assert group.session is None and not group.buffer.nodes
    assert not any("_partial" in t for t in sent)


def test_a_signed_update_held_before_its_round_starts_is_counted_then_and_a_copy_is_dropped(tmp_path):
    """A restarted aggregator's session hands it updates before the retained start: held, their signatures
    checked at once, their nonces remembered only when they count (not taken for their own replay). A copy
    of a counted message (a node resending to a restarted aggregator) is dropped without a rejection."""
    import json

    from fedmq.shared.signing import Auth, new_signing_key

    keys = {p: new_signing_key(str(tmp_path / f"{p}.sign")) for p in ("coordinator", "h1", "h2")}
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    tm = parse_topic_map(MAP)
    rej = Rejections(__import__("logging").getLogger("test"))
    sent = []
    agg = GroupAggregator(tm, tm.groups()[("home",)], Membership(tm), lambda *a: sent.append(a), rej,
                          auth=Auth("coordinator", str(tmp_path / "coordinator.sign"), str(tmp_path / "keys.json")))
    t = Topics("f").update(("home",), "h1")

    def signed(node):
        env = Envelope(kind=Kind.UPDATE, federation="f", round=1, sender=node, model_version=0,
                       tensors=initial_weights(tm.model), samples=5, attempt=1)
        return Auth(node, str(tmp_path / f"{node}.sign"), str(tmp_path / "keys.json")).seal(env)

    early = signed("h1")
    agg.on_update("h1", early, t)  # before the start: held
    forged = bytearray(signed("h2"))
    forged[-1] ^= 1
    agg.on_update("h2", bytes(forged), t)  # a bad signature is refused at once, not held
    assert len(agg.early) == 1 and dict(rej.total) == {"bad signature": 1}
    agg.start(Control("start", 1, attempt=1, model_version=0, deadline_at=time.time() + 30, selected=["h1", "h2"],
                      train=TrainParams(1, 8, 0.1)))
    assert agg.current is not None and agg.current.answered == {"h1"}, dict(rej.total)
    agg.on_update("h1", early, t)  # the same message again: already counted, dropped quietly
    assert dict(rej.total) == {"bad signature": 1}
    agg.on_update("h2", signed("h2"), t)
    assert [m for m in sent if m[0] == Topics("f").partial((), "home")]  # both in: closed
