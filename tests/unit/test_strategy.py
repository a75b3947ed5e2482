"""Aggregation strategies without a broker: robust rules, clipping, server optimizers, privacy, config."""

import numpy as np
import pytest

from fedhelp import GOOD_TOPIC_MAP as GOOD
from fedmq.coordinator.strategy.clipping import clip_update
from fedmq.coordinator.strategy.optimizer import make_optimizer
from fedmq.coordinator.strategy.privacy import Accountant
from fedmq.coordinator.strategy.rule import RobustError, buckets, make_rule
from fedmq.coordinator.strategy.rules._krum import krum_scores
from fedmq.coordinator.strategy.rules.trimmed_mean import TrimmedMean
from fedmq.node.privacy import privatize
from fedmq.shared.codecs import Sparse, norm
from fedmq.shared.messages import Control, TrainParams
from fedmq.shared.topicmap import Privacy, TopicMapError, parse_topic_map


def honest_and_attackers(n_honest=8, n_bad=2, p=5, seed=0):
    rng = np.random.default_rng(seed)
    honest = 1.0 + 0.01 * rng.normal(size=(n_honest, p))
    bad = np.full((n_bad, p), -100.0)
    return np.vstack([honest, bad]), np.ones(n_honest + n_bad)


@pytest.mark.parametrize("rule,params", [("median", {}), ("trimmed_mean", {}), ("krum", {"byzantine": 2}),
                                         ("multi_krum", {"byzantine": 2})])
def test_robust_rules_ignore_a_minority_of_outliers(rule, params):
    rows, w = honest_and_attackers()
    agg = make_rule(rule, params).aggregate(rows, w)
    np.testing.assert_allclose(agg, 1.0, atol=0.05)
    assert abs(rows.mean(axis=0) - 1.0).max() > 10  # what the mean would have been


def test_buckets_average_shuffled_groups_and_divide_the_tolerated_attackers():
    rows, w = honest_and_attackers(n_honest=9, n_bad=1)
    means, totals = buckets(rows, w, 2, np.random.default_rng(0))
    assert means.shape == (5, 5) and totals.tolist() == [2.0] * 5  # 10 rows in 5 buckets of 2
    np.testing.assert_allclose((means * totals[:, None]).sum(axis=0), (rows * w[:, None]).sum(axis=0))
    np.testing.assert_allclose(make_rule("median", {}).aggregate(means, totals), 1.0, atol=0.05)
    # 2 attackers in 10 may spoil 2 of 5 buckets: a trimmed mean cutting 1 at each end no longer holds
    rows, w = honest_and_attackers()
    spoilt = make_rule("trimmed_mean", {}).aggregate(*buckets(rows, w, 2, np.random.default_rng(0)))
    assert abs(spoilt - 1.0).max() > 1


def test_trimmed_mean_and_krum_refuse_too_few_updates():
    with pytest.raises(RobustError):
        krum_scores(np.zeros((3, 2)), byzantine=2)
    with pytest.raises(RobustError):
        TrimmedMean(0.49 + 0.01).aggregate(np.zeros((2, 2)), np.ones(2))
    np.testing.assert_allclose(TrimmedMean(0.2).aggregate(np.array([[1.0], [2.0], [30.0], [-40.0], [3.0]]),
                                                          np.ones(5)), [2.0])


def test_clipping_scales_changes_of_dense_and_sparse_updates():
    ref = {"w": np.zeros(4)}
    dense = {"w": np.array([3.0, 4.0, 0, 0])}
    before = norm(dense, ref)
    clipped = clip_update(dense, ref, 1.0, before)
    assert before == 5.0 and norm(clipped, ref) == pytest.approx(1.0)
    sparse = {"w": Sparse(np.array([1]), np.array([10.0], np.float32), (4,))}
    before = norm(sparse, None)
    assert before == 10.0 and clip_update(sparse, None, 2.0, before)["w"].val[0] == pytest.approx(2.0)
    small = {"w": np.array([0.1, 0, 0, 0])}
    same = clip_update(small, ref, 1.0, norm(small, ref))
    assert same["w"][0] == 0.1


def test_server_optimizers_follow_their_update_rules():
    x, d = {"w": np.zeros(2, np.float32)}, {"w": np.array([1.0, -2.0])}
    np.testing.assert_allclose(make_optimizer("fedavg", 1.0, {}).step(x, d)["w"], [1.0, -2.0])
    m = make_optimizer("fedavgm", 1.0, {"server_momentum": 0.5})
    m.step(x, d)
    np.testing.assert_allclose(m.step(x, d)["w"], [1.5, -3.0])  # v = 0.5 * d + d
    got = make_optimizer("fedadam", 0.1, {"beta1": 0.9, "beta2": 0.99, "tau": 1e-3}).step(x, d)["w"]
    v = 0.99 * 1e-6 + 0.01 * np.array([1.0, 4.0])
    np.testing.assert_allclose(got, 0.1 * 0.1 * np.array([1.0, -2.0]) / (np.sqrt(v) + 1e-3), rtol=1e-5)
    for name in ("fedyogi", "fedadagrad"):
        step = make_optimizer(name, 0.1, {}).step(x, d)["w"]
        assert np.sign(step).tolist() == [1.0, -1.0]


def test_accountant_spends_more_with_more_rounds_and_less_with_sampling_and_noise():
    central = Accountant(Privacy(mode="central", noise_multiplier=1.0, clip_norm=1.0, delta=1e-5))
    assert central.event(100, 10) == [0.1, 1.0]
    eps = [central.compose(central.event(100, 10)) for _ in range(3)]
    assert 0 < eps[0] < eps[1] < eps[2]
    full = Accountant(Privacy(mode="central", noise_multiplier=1.0))
    assert full.compose(full.event(100, 100)) > eps[0]  # no amplification by sampling
    noisy = Accountant(Privacy(mode="local", noise_multiplier=4.0))
    assert noisy.event(100, 10) == [1.0, 4.0]  # local noise protects a node whoever else takes part
    assert noisy.compose(noisy.event(100, 10)) < full.epsilon()
    replayed = Accountant(Privacy(mode="central", noise_multiplier=1.0, clip_norm=1.0, delta=1e-5))
    for _ in range(3):  # what a restarted coordinator does with its checkpoint's events
        replayed.compose([0.1, 1.0])
    assert replayed.epsilon() == pytest.approx(eps[2])


def test_server_optimizer_moments_survive_a_restart():
    x, d = {"w": np.ones(3, np.float32)}, {"w": np.array([0.5, -1.0, 0.0])}
    first = make_optimizer("fedadam", 0.1, {})
    x1 = first.step(x, d)
    again = make_optimizer("fedadam", 0.1, {})
    again.restore(first.moments())
    assert set(first.moments()) == {"m/w", "v/w"}
    np.testing.assert_array_equal(again.step(x1, d)["w"], first.step(x1, d)["w"])


def test_local_privacy_clips_then_adds_noise():
    start = {"w": np.zeros(1000, np.float32)}
    out = privatize({"w": np.full(1000, 10.0, np.float32)}, start, clip_norm=1.0, noise_multiplier=0.0)
    assert np.linalg.norm(out["w"]) == pytest.approx(1.0, rel=1e-5)
    noisy = privatize(start, start, 1.0, 2.0, np.random.default_rng(0))
    assert np.std(noisy["w"]) == pytest.approx(2.0, rel=0.1)


def test_train_fields_round_trip_and_are_omitted_when_unset():
    ctl = Control(type="start", round=1, attempt=1, deadline_at=1.0, selected=["a"],
                  train=TrainParams(1, 8, 0.1, proximal_mu=0.5, dp_clip_norm=1.0, dp_noise_multiplier=1.2))
    assert Control.decode(ctl.encode()).train == ctl.train
    plain = Control(type="start", round=1, attempt=1, deadline_at=1.0, selected=["a"], train=TrainParams(1, 8, 0.1))
    assert b"proximal_mu" not in plain.encode() and Control.decode(plain.encode()).train == plain.train


def test_strategy_section_is_read_and_checked():
    tm = parse_topic_map(GOOD + "strategy: {aggregator: trimmed_mean, trim_fraction: 0.1, server_optimizer: fedadam}\n")
    assert tm.strategy.robust and tm.strategy.server_optimizer == "fedadam"
    with pytest.raises(TopicMapError, match="strategy.aggregator"):
        parse_topic_map(GOOD + "strategy: {aggregator: geometric_median}\n")
    with pytest.raises(TopicMapError, match="robust rule"):
        parse_topic_map(GOOD + "strategy: {aggregator: median, privacy: {clip_norm: 1.0}}\n")
    with pytest.raises(TopicMapError, match="clip_norm"):
        parse_topic_map(GOOD + "strategy: {privacy: {noise_multiplier: 1.0}}\n")


@pytest.mark.parametrize("section,problem", [
    ("{aggregator: geometric_median}", "strategy.aggregator: must be one of fedavg, fltrust, krum, median, multi_krum"),
    ("{server_optimizer: sgd}", "strategy.server_optimizer: must be one of fedadagrad, fedadam, fedavg, fedavgm"),
    ("{aggregator: trimmed_mean, trim_fraction: 0.6}", "strategy.trim_fraction: must be at most 0.49"),
    ("{aggregator: krum, byzantine: two}", "strategy.byzantine: must be an integer"),
    ("{aggregator: krum, byzantin: 2}", "did you mean 'byzantine'"),
    ("{server_optimizer: fedadam, beta3: 0.5}", "strategy.beta3: unknown key"),
])
def test_component_names_and_parameters_are_checked_with_file_line_and_fix(section, problem):
    with pytest.raises(TopicMapError) as err:
        parse_topic_map(GOOD + f"strategy: {section}\n", "fed.yaml")
    assert problem in str(err.value) and "fed.yaml:" in str(err.value)


NEW_RULE = '''"""A rule of our own: the coordinate-wise mean of the updates inside the central quantiles."""

import numpy as np

from fedmq.coordinator.strategy.components import Param
from fedmq.coordinator.strategy.rule import RobustRule


class QuantileMean(RobustRule):
    name = "quantile_mean"
    params = (Param("quantile", float, 0.1, 0.0, 0.45, "the share ignored at each end"),)

    def __init__(self, quantile: float) -> None:
        self.quantile = quantile

    def aggregate(self, rows, weights):
        lo, hi = np.quantile(rows, [self.quantile, 1 - self.quantile], axis=0)
        inside = (rows >= lo) & (rows <= hi)
        return (rows * inside).sum(axis=0) / np.maximum(inside.sum(axis=0), 1)


COMPONENT = QuantileMean
'''


def test_a_new_robust_rule_is_one_new_file_in_the_rules_folder(tmp_path, monkeypatch):
    """A module dropped next to the built-in rules is found by name, its parameter checked and used."""
    from fedmq.coordinator.strategy import rules
    from fedmq.coordinator.strategy.rule import RULES

    (tmp_path / "quantile_mean.py").write_text(NEW_RULE)
    monkeypatch.setattr(rules, "__path__", [*rules.__path__, str(tmp_path)])  # the folder, as if added to it
    monkeypatch.setattr(RULES, "_loaded", {})
    tm = parse_topic_map(GOOD + "strategy: {aggregator: quantile_mean, quantile: 0.2}\n")
    assert tm.strategy.robust and tm.strategy.params == {"quantile": 0.2}
    rows, w = honest_and_attackers()
    np.testing.assert_allclose(make_rule("quantile_mean", tm.strategy.params).aggregate(rows, w), 1.0, atol=0.05)
    with pytest.raises(TopicMapError, match="strategy.quantile: must be at most 0.45"):
        parse_topic_map(GOOD + "strategy: {aggregator: quantile_mean, quantile: 0.5}\n")


def test_a_new_server_optimizer_is_one_new_file_in_the_optimizers_folder(tmp_path, monkeypatch):
    from fedmq.coordinator.strategy import optimizers
    from fedmq.coordinator.strategy.optimizer import OPTIMIZERS

    (tmp_path / "fedsign.py").write_text('''"""signSGD on the server: the sign of the change."""

import numpy as np

from fedmq.coordinator.strategy.optimizer import ServerOptimizer


class FedSign(ServerOptimizer):
    name = "fedsign"

    def direction(self, tensor, change):
        return np.sign(change)


COMPONENT = FedSign
''')
    monkeypatch.setattr(optimizers, "__path__", [*optimizers.__path__, str(tmp_path)])
    monkeypatch.setattr(OPTIMIZERS, "_loaded", {})
    tm = parse_topic_map(GOOD + "strategy: {server_optimizer: fedsign, server_lr: 0.5}\n")
    opt = make_optimizer(tm.strategy.server_optimizer, tm.strategy.server_lr, tm.strategy.params)
    x, d = {"w": np.zeros(2, np.float32)}, {"w": np.array([3.0, -0.1])}
    np.testing.assert_allclose(opt.step(x, d)["w"], [0.5, -0.5])


def test_topic_map_reads_async_edge_rounds_and_secure_aggregation():
    tm = parse_topic_map(GOOD + "strategy: {mode: async, clip_norm: 2.0, async: {buffer_size: 5, max_staleness: 3}}\n")
    assert tm.strategy.mode == "async" and tm.strategy.asynchronous.buffer_size == 5
    assert tm.strategy.asynchronous.max_staleness == 3 and tm.strategy.asynchronous.staleness_exponent == 0.5
    tm = parse_topic_map(GOOD + "strategy: {edge_rounds: [3, 2], clip_norm: 2.0, secure: {threshold: 0.7}}\n")
    assert [tm.strategy.edge_rounds_at(d) for d in (1, 2, 3)] == [3, 2, 1]
    assert tm.strategy.secure.threshold == 0.7 and tm.strategy.secure.frac_bits == 20
    assert parse_topic_map(GOOD + "strategy: {secure: true, clip_norm: none}\n").strategy.secure is not None


@pytest.mark.parametrize("strategy, key", [
    ("{mode: async, aggregator: median}", "strategy.aggregator"),
    ("{mode: async, privacy: {clip_norm: 1.0}}", "strategy.privacy"),
    ("{mode: async, secure: true}", "strategy.secure"),
    ("{edge_rounds: [2], aggregator: krum}", "strategy.edge_rounds"),
    ("{edge_rounds: [0]}", "strategy.edge_rounds"),
    ("{secure: true, aggregator: median}", "strategy.secure"),
    ("{secure: {threshold: 0.4}}", "strategy.secure.threshold"),
    ("{mode: sometimes}", "strategy.mode"),
    ("{mode: async}", "strategy.clip_norm"),  # the adaptive bound needs rounds
    ("{edge_rounds: [2]}", "strategy.clip_norm"),  # ... and the nodes' own updates
    ("{secure: true}", "strategy.clip_norm"),  # ... and their norms
    ("{clip_norm: often}", "strategy.clip_norm"),
    ("{weight_cap: -3}", "strategy.weight_cap"),
    ("{privacy: {clip_norm: 1.0}, weight_cap: 100}", "strategy.weight_cap"),
])
def test_topic_map_refuses_strategies_that_do_not_compose(strategy, key):
    with pytest.raises(TopicMapError) as err:
        parse_topic_map(GOOD + f"strategy: {strategy}\n")
    assert key in str(err.value)


def test_secure_aggregation_needs_raw_updates():
    with pytest.raises(TopicMapError, match="cannot be masked"):
        parse_topic_map(GOOD + "compression: {update: int8}\nstrategy: {secure: true, clip_norm: 1.0}\n")


def test_staleness_discount_is_fedbuffs_polynomial():
    from fedmq.coordinator.async_group import staleness_weight

    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)
    assert staleness_weight(3, 0.0) == 1.0


def test_fltrust_weights_changes_by_their_agreement_with_the_trusted_change():
    """A change pointing away from the trusted one counts nothing, a long one is cut to the trusted norm, and
    the mean of the rest follows the honest direction (Cao et al. 2021)."""
    rule = make_rule("fltrust", {})
    assert rule.trusted
    rng = np.random.default_rng(0)
    trusted = rng.normal(size=20)
    honest = trusted + 0.3 * rng.normal(size=(8, 20))
    attackers = np.vstack([-10 * trusted, 1000 * honest[0]])  # a sign flip x10, and an honest one x1000
    agg = rule.aggregate_trusted(np.vstack([honest, attackers]), trusted)
    cos = agg @ trusted / (np.linalg.norm(agg) * np.linalg.norm(trusted))
    assert cos > 0.95 and np.linalg.norm(agg) <= np.linalg.norm(trusted) * (1 + 1e-9)
    assert np.allclose(rule.aggregate_trusted(np.vstack([-trusted, -2 * trusted]), trusted), 0.0)
    assert np.allclose(rule.aggregate_trusted(honest, np.zeros(20)), 0.0)
    with pytest.raises(RobustError):
        rule.aggregate(honest, np.ones(8))


def test_fltrust_needs_an_evaluation_set():
    """Without one it is a file:line error naming the fix."""
    import yaml as _yaml

    base = {"federation": "f", "model": {"kind": "softmax_regression", "features": 4, "classes": [0, 1]},
            "strategy": {"aggregator": "fltrust"}, "tree": {"nodes": ["a", "b"]}}
    with pytest.raises(TopicMapError, match=r"(?s):\d+: strategy.aggregator: fltrust .* names none.*evaluation:"):
        parse_topic_map(_yaml.safe_dump(base))
