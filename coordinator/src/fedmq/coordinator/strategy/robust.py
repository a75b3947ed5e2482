"""Byzantine-robust aggregation rules over every update of a round, stacked as rows of a matrix.

They need the updates themselves, not sums: groups running such a rule forward their nodes' updates up
the tree (docs/strategies.md says what that costs), and the root applies the rule to all of them.
All rules are translation-invariant, so they work the same on weights and on changes.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from fedmq.shared.topicmap import Strategy


class RobustError(ValueError):
    """Too few updates for the rule as configured."""


def median(stack: np.ndarray) -> np.ndarray:
    """Coordinate-wise median (Yin et al. 2018)."""
    return np.median(stack, axis=0)


def trimmed_mean(stack: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Coordinate-wise mean after cutting the ``floor(trim_fraction * n)`` largest and smallest values."""
    n = len(stack)
    k = int(math.floor(trim_fraction * n))
    if n - 2 * k < 1:
        raise RobustError(f"trimmed mean: trimming {k} at each end of {n} updates leaves none")
    if k == 0:
        return stack.mean(axis=0)
    return np.sort(stack, axis=0)[k:n - k].mean(axis=0)


def krum_scores(stack: np.ndarray, byzantine: int) -> np.ndarray:
    """Krum's score of each update: the summed squared distance to its ``n - f - 2`` nearest others
    (Blanchard et al. 2017)."""
    n = len(stack)
    closest = n - byzantine - 2
    if closest < 1:
        raise RobustError(f"krum needs more than f + 2 updates (f = {byzantine}), got {n}")
    sq = np.einsum("ij,ij->i", stack, stack)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * stack @ stack.T, 0.0)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, :closest].sum(axis=1)


def buckets(stack: np.ndarray, weights: np.ndarray, size: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
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


def aggregate(strategy: Strategy, stack: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The strategy's robust aggregate of the rows of ``stack`` (``weights``: their capped sample counts),
    applied to bucket means when ``bucket_size`` > 1 (``rng`` shuffles the buckets)."""
    stack, weights = buckets(stack, weights, strategy.bucket_size, rng)
    rule = strategy.aggregator
    if rule == "median":
        return median(stack)
    if rule == "trimmed_mean":
        return trimmed_mean(stack, strategy.trim_fraction)
    scores = krum_scores(stack, strategy.byzantine)
    if rule == "krum":
        return stack[int(np.argmin(scores))].copy()
    keep = strategy.multi_krum_keep or len(stack) - strategy.byzantine
    best = np.argsort(scores, kind="stable")[:max(1, min(keep, len(stack)))]
    w = weights[best]
    return (stack[best] * w[:, None]).sum(axis=0) / w.sum()
