"""The interface of a Byzantine-robust aggregation rule, and the registry of installed rules.

A rule gets every update of a round as the rows of a matrix (with their weights, the capped sample counts)
and returns one row: the round's aggregate. Rules need the updates themselves, not sums, so groups running
one forward their nodes' updates up the tree (docs/strategies.md says what that costs). Every built-in rule
is translation-invariant, so it works the same on weights and on changes. A new rule is one module in
``fedmq.coordinator.strategy.rules`` (or an entry point in ``fedmq.aggregation_rules``).
"""

from __future__ import annotations

import abc
from typing import Mapping, Tuple

import numpy as np

from fedmq.coordinator.strategy.components import Component, Registry

FEDAVG = "fedavg"  # the streaming sample-weighted mean, summed up the tree: not a rule over rows


class RobustError(ValueError):
    """Too few updates for the rule as configured."""


class RobustRule(Component, abc.ABC):
    """One robust rule, configured by its parameters. A rule with ``trusted = True`` scores the round's
    changes against a trusted change (the global model trained on the coordinator's own data set, the topic
    map's ``evaluation``): ``aggregate_trusted`` is called instead of ``aggregate``."""

    trusted = False

    @abc.abstractmethod
    def aggregate(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The aggregate of ``rows`` (n x P) with ``weights`` (n); RobustError when n is too small."""

    def aggregate_trusted(self, changes: np.ndarray, trusted: np.ndarray) -> np.ndarray:
        """The aggregate change of ``changes`` (n x P) given the ``trusted`` change (P); rules with
        ``trusted = True`` implement it."""
        raise NotImplementedError


RULES: Registry[RobustRule] = Registry("aggregator", "fedmq.coordinator.strategy.rules", "fedmq.aggregation_rules",
                                       RobustRule)


def make_rule(name: str, params: Mapping[str, object]) -> RobustRule:
    """The rule ``name`` with its parameters from a strategy's ``params``."""
    cls = RULES.get(name)
    return cls(**cls.arguments(params))


def buckets(stack: np.ndarray, weights: np.ndarray, size: int, rng: np.random.Generator
            ) -> Tuple[np.ndarray, np.ndarray]:
    """The rows shuffled into buckets of ``size`` and averaged within each (weighted): a robust rule applied to
    the bucket means copes with heterogeneous (non-IID) honest updates (Karimireddy et al. 2022)."""
    if size <= 1 or len(stack) <= size:
        return stack, weights
    order = rng.permutation(len(stack))
    means, totals = [], []
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        w = weights[idx]
        means.append((stack[idx] * w[:, None]).sum(axis=0) / w.sum())
        totals.append(w.sum())
    return np.stack(means), np.asarray(totals)
