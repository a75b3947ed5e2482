"""Krum (Blanchard et al. 2017): the one update closest to its nearest neighbours."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.rule import RobustRule
from fedmq.coordinator.strategy.rules._krum import BYZANTINE, krum_scores


class Krum(RobustRule):
    """The update with the lowest Krum score, tolerating ``byzantine`` attackers."""

    name = "krum"
    params = (BYZANTINE,)

    def __init__(self, byzantine: int) -> None:
        self.byzantine = byzantine

    def aggregate(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The best-scored row."""
        return rows[int(np.argmin(krum_scores(rows, self.byzantine)))].copy()


COMPONENT = Krum
