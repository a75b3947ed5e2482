"""Aggregation strategies over a real Mosquitto: Byzantine-robust rules against attacking nodes (forwarded
through a child group), server optimizers, FedProx and differential privacy end to end.

Nodes run fedmq's real NodeAgent in threads (each with its own MQTT connection); attackers are NodeAgents
whose trainer turns every honest change into a scaled, sign-flipped one.
"""

import threading
from dataclasses import replace

import numpy as np
import pytest

from fedhelp import wait_for, write_federation
from fedmq.broker.process import MosquittoProcess
from fedmq.node.agent import NodeAgent
from fedmq.node.config import load_node_config
from fedmq.shared.data import open_source
from inprocess import InThreadCoordinator

GROUPS = {"home1": [f"a{i}" for i in range(5)], "home2": [f"b{i}" for i in range(5)]}
ATTACKERS = {"a4", "b4"}  # 20 % of the nodes, one in each group
ROUNDS = 6


class SignFlipped:
    """A trainer whose update is start - 10 x (honest change): a scaled, sign-flipped attack."""

    def __init__(self, inner):
        self.inner, self.name, self.supports_proximal = inner, inner.name, inner.supports_proximal

    def set_weights(self, weights):
        self.start = {k: np.asarray(v, np.float32).copy() for k, v in weights.items()}
        self.inner.set_weights(weights)

    def get_weights(self):
        w = self.inner.get_weights()
        return {k: (self.start[k] - 10.0 * (w[k] - self.start[k])).astype(np.float32) for k in w}

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Attacker(NodeAgent):
    def _make_trainer(self, model_file):
        super()._make_trainer(model_file)
        self.trainer = SignFlipped(self.trainer)


def run_federation(tmp_path, port, strategy, attackers=(), rounds=ROUNDS, delays=None, extra_rounds=None,
                   dropouts=None, attack=None):
    """Run a federation of GROUPS to ``rounds`` rounds; ``attackers`` send start - 10 x their change: through
    their trainer (SignFlipped), or, given ``attack`` = (scale, claimed samples or None), as the node's
    simulate_attack, after everything an honest node does (its own clipping under secure aggregation)."""
    dropouts = dropouts or {}
    paths = write_federation(str(tmp_path), port, GROUPS, rounds=rounds, checkpoint=False,
                             extra={"strategy": strategy} if strategy else None,
                             extra_rounds={"learning_rate": 0.05, **(extra_rounds or {})})
    agents = []
    for n in [n for ns in GROUPS.values() for n in ns]:
        cfg = replace(load_node_config(paths[n]), simulate_delay_s=(delays or {}).get(n, 0.0),
                      simulate_attack=attack if attack and n in attackers else None)
        x, y = open_source(cfg.data).load()
        agents.append((Attacker if n in attackers and not attack else dropouts.get(n, NodeAgent))(cfg, x, y))
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for t in threads:
        t.start()
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            wait_for(lambda: len(c.rounds) >= rounds or c.error is not None, 90, f"{rounds} rounds")
            assert c.error is None, c.error
            run_federation.agents = agents
            return c.rounds, c.service
    finally:
        for a in agents:
            a.stop()
        for t in threads:
            t.join(10)


@pytest.fixture(scope="module")
def clean_accuracy(tmp_path_factory):
    """Final accuracy of the same federation with every node honest (its own broker)."""
    tmp = tmp_path_factory.mktemp("clean")
    proc = MosquittoProcess(str(tmp / "mosquitto")).start()
    try:
        rounds, _ = run_federation(tmp, proc.port, None)
    finally:
        proc.stop()
    return rounds[-1]["accuracy"]


@pytest.mark.parametrize("strategy", [{"aggregator": "median"}, {"aggregator": "trimmed_mean", "trim_fraction": 0.2},
                                      {"aggregator": "krum", "byzantine": 2},
                                      {"aggregator": "multi_krum", "byzantine": 2}])
def test_robust_rules_hold_against_20_percent_attackers(tmp_path, broker, clean_accuracy, strategy):
    rounds, _ = run_federation(tmp_path, broker.port, strategy, ATTACKERS)
    assert all(r["updates"] == 10 for r in rounds)  # the attackers' updates were counted, then outvoted
    assert rounds[-1]["accuracy"] >= clean_accuracy - 0.02, (clean_accuracy, [r["accuracy"] for r in rounds])


UNBOUNDED = {"clip_norm": "none", "weight_cap": "none"}


@pytest.mark.parametrize("claims", [None, 10_000])
def test_unbounded_fedavg_breaks_down_under_the_same_attack(tmp_path, broker, clean_accuracy, claims):
    rounds, _ = run_federation(tmp_path, broker.port, UNBOUNDED, ATTACKERS, attack=(-10.0, claims) if claims else None)
    assert clean_accuracy > 0.9
    assert rounds[-1]["accuracy"] < clean_accuracy - 0.2, [r["accuracy"] for r in rounds]


@pytest.mark.parametrize("claims", [None, 10_000])
def test_default_bounds_hold_against_the_same_attack(tmp_path, broker, clean_accuracy, claims):
    """The defaults (weight cap, adaptive clipping): the attackers, even claiming 10,000 samples
    each against the others' 80, count as two nodes of typical size and length."""
    rounds, service = run_federation(tmp_path, broker.port, None, ATTACKERS, attack=(-10.0, claims) if claims else None)
    assert rounds[-1]["accuracy"] >= clean_accuracy - 0.05, (clean_accuracy, [r["accuracy"] for r in rounds])
    assert "bounds" not in rounds[0] or "norm" not in rounds[0]["bounds"]  # the calibration round
    assert all(r["bounds"]["norm"] > 0 for r in rounds[1:])
    assert sum(r["clipped"] for r in rounds[1:]) >= 2 * (len(rounds) - 1)  # at least the attackers, every round
    if claims:  # (nodes with more data than the median are capped too)
        assert all(r["capped"] >= 2 for r in rounds)


def test_clipping_bounds_every_change(tmp_path, broker):
    rounds, _ = run_federation(tmp_path, broker.port, {"clip_norm": 0.05}, rounds=2)
    assert all(r["clipped"] == 10 for r in rounds)  # each change was larger and was cut down


@pytest.mark.parametrize("strategy", [
    {"server_optimizer": "fedavgm", "server_lr": 1.0, "server_momentum": 0.5},
    {"server_optimizer": "fedadam", "server_lr": 0.05},
    {"server_optimizer": "fedyogi", "server_lr": 0.05},
    {"server_optimizer": "fedadagrad", "server_lr": 0.05},
    {"proximal_mu": 1.0},
])
def test_server_optimizers_and_fedprox_learn(tmp_path, broker, strategy):
    rounds, _ = run_federation(tmp_path, broker.port, strategy)
    assert rounds[-1]["accuracy"] > 0.9, [r["accuracy"] for r in rounds]


@pytest.mark.parametrize("mode", ["central", "local"])
def test_differential_privacy_reports_its_budget(tmp_path, broker, mode):
    strategy = {"privacy": {"mode": mode, "noise_multiplier": 0.5, "clip_norm": 1.0, "delta": 1e-5}}
    rounds, _ = run_federation(tmp_path, broker.port, strategy, rounds=3)
    eps = [r["epsilon"] for r in rounds]
    assert 0 < eps[0] < eps[1] < eps[2] < float("inf")  # the budget is spent round after round
    assert all(r["delta"] == 1e-5 for r in rounds)


def test_async_fedbuff_is_not_held_back_by_slow_nodes(tmp_path, broker):
    """Three nodes take 6 s per training, the others 0.5 s; in sync mode every round would wait for the slow
    ones. In async mode the root applies a version per 4 changes, and the slow nodes' changes arrive late,
    discounted by staleness (30 versions take the fast nodes over 6 s of training, busy machine or not)."""
    delays = {n: 0.5 for ns in GROUPS.values() for n in ns}
    delays.update({"a0": 6.0, "a1": 6.0, "b0": 6.0})
    strategy = {"mode": "async", "clip_norm": "none", "async": {"buffer_size": 4, "max_staleness": 30, "flush_s": 0.2}}
    rounds, service = run_federation(tmp_path, broker.port, strategy, rounds=30, delays=delays)
    assert [r["model_version"] for r in rounds] == list(range(1, 31))
    assert all(r["updates"] >= 4 for r in rounds)
    assert rounds[-1]["accuracy"] > 0.9, [r["accuracy"] for r in rounds]
    # versions went on without the slow nodes, whose changes came in later, made from older versions
    assert max(r["staleness"] for r in rounds) > 0
    assert service.rejections.total.get("too stale", 0) == 0


def test_hierfavg_edge_rounds_per_root_round(tmp_path, broker):
    """edge_rounds [3]: each home group aggregates three times (publishing its own model in between) per
    root round, so every node trains three times per round and the groups send one partial each."""
    rounds, service = run_federation(tmp_path, broker.port, {"edge_rounds": [3], "clip_norm": "none"}, rounds=3,
                                     extra_rounds={"deadline_s": 20})
    assert [r["updates"] for r in rounds] == [10, 10, 10]
    assert all(a.rounds_done == 9 for a in run_federation.agents), [a.rounds_done for a in run_federation.agents]
    assert rounds[-1]["accuracy"] > 0.9, [r["accuracy"] for r in rounds]
    assert all(t in service.retained for t in (service.topics.group_model(("home1",)),
                                               service.topics.group_model(("home2",))))


class DropsAfterSharing(NodeAgent):
    """Takes part in the key exchange, then goes silent: never sends its masked update."""

    def _secure_input(self, ctl, weights, start, metrics, claimed=None):
        self.log.info("round %d: dropping out after sharing keys", ctl.round)


def test_secure_aggregation_costs_no_accuracy_and_survives_dropouts(tmp_path, broker, clean_accuracy):
    """Each home group runs secure aggregation over its 5 nodes; one node per group drops out after the
    key exchange in every round, so the groups rebuild its mask key from the others' shares."""
    dropped = {"a0": DropsAfterSharing, "b0": DropsAfterSharing}
    rounds, service = run_federation(
        tmp_path,
        broker.port,
        {"secure": {"phase_s": 3, "threshold": 0.6}, "clip_norm": 100.0},
        dropouts=dropped,
        rounds=3,
        extra_rounds={"quorum": 0.8, "deadline_s": 6},
    )
    assert [r["updates"] for r in rounds] == [8] * 3  # 4 survivors in each of the 2 groups
    assert rounds[-1]["accuracy"] >= clean_accuracy - 0.02, (clean_accuracy, [r["accuracy"] for r in rounds])
    assert sum(service.rejections.total.values()) == 0, service.rejections.total


@pytest.mark.parametrize("claims", [None, 10_000])
def test_a_secure_group_refuses_a_sum_that_breaks_the_bounds(tmp_path, broker, clean_accuracy, claims):
    """Under secure aggregation nobody sees an update, so the bounds are checked on each group's unmasked
    sum: a member claiming 10,000 samples against the cap, or sending start - 10 x its change beyond what
    the group's clipped members could sum to, costs its own group the round's sum, never the model."""
    strategy = {"secure": {"phase_s": 3}, "clip_norm": 0.5}
    rounds, service = run_federation(
        tmp_path, broker.port, strategy, {"a4"}, rounds=3, attack=(-10.0, claims), extra_rounds={"quorum": 0.5}
    )
    refused = service.rejections.total["secure sum out of bounds"]
    # an inflated weight is always caught; a long change whenever it exceeds the group's allowance (in the
    # first round; later, as changes shrink, it fits within what the group's bound lets a liar do)
    assert refused == 3 if claims else refused >= 1
    assert sum(r["updates"] == 5 for r in rounds) == refused  # only home2's sum counted in those rounds
    assert rounds[-1]["accuracy"] >= clean_accuracy - 0.05, [r["accuracy"] for r in rounds]


def test_secure_aggregation_matches_plain_fedavg(tmp_path, broker):
    """Same nodes and seeds: the securely aggregated model equals plain FedAvg's up to the field's rounding."""
    plain, plain_service = run_federation(tmp_path / "plain", broker.port, UNBOUNDED, rounds=2)
    secure, secure_service = run_federation(
        tmp_path / "secure", broker.port, {"secure": {"phase_s": 3}, **UNBOUNDED}, rounds=2
    )
    a, b = plain_service.driver.weights, secure_service.driver.weights
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4
