"""Coordinate-wise median (Yin et al. 2018)."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.rule import RobustRule


class Median(RobustRule):
    """Each coordinate's median over the updates."""

    name = "median"

    def aggregate(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The coordinate-wise median (weights are not used)."""
        return np.median(rows, axis=0)


COMPONENT = Median
