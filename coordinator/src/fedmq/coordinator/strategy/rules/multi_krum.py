"""Multi-Krum (Blanchard et al. 2017): the weighted mean of the best-scored updates."""

from __future__ import annotations

from typing import Optional

import numpy as np

from fedmq.coordinator.strategy.components import Param
from fedmq.coordinator.strategy.rule import RobustRule
from fedmq.coordinator.strategy.rules._krum import BYZANTINE, krum_scores


class MultiKrum(RobustRule):
    """The weighted mean of the ``multi_krum_keep`` best-scored updates (default ``n - byzantine``)."""

    name = "multi_krum"
    params = (BYZANTINE, Param("multi_krum_keep", int, None, 1, None, "how many updates to average "
                               "(default: all but byzantine)", optional=True))

    def __init__(self, byzantine: int, multi_krum_keep: Optional[int]) -> None:
        self.byzantine, self.keep = byzantine, multi_krum_keep

    def aggregate(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The weighted mean of the kept rows."""
        scores = krum_scores(rows, self.byzantine)
        keep = self.keep or len(rows) - self.byzantine
        best = np.argsort(scores, kind="stable")[:max(1, min(keep, len(rows)))]
        w = weights[best]
        return (rows[best] * w[:, None]).sum(axis=0) / w.sum()


COMPONENT = MultiKrum
