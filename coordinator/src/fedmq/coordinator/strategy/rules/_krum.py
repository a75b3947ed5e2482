"""What Krum and Multi-Krum share: the score of each update and the number of attackers tolerated."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.components import Param
from fedmq.coordinator.strategy.rule import RobustError

BYZANTINE = Param("byzantine", int, 0, 0, None, "how many attackers the rule tolerates (f)")


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
