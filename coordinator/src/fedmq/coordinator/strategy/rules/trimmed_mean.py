"""Coordinate-wise trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

import math

import numpy as np

from fedmq.coordinator.strategy.components import Param
from fedmq.coordinator.strategy.rule import RobustError, RobustRule


class TrimmedMean(RobustRule):
    """Each coordinate's mean after cutting the ``floor(trim_fraction * n)`` largest and smallest values."""

    name = "trimmed_mean"
    params = (Param("trim_fraction", float, 0.2, 0.0, 0.49, "the fraction cut at each end"),)

    def __init__(self, trim_fraction: float) -> None:
        self.trim_fraction = trim_fraction

    def aggregate(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The trimmed mean of each coordinate; RobustError when trimming leaves nothing."""
        n = len(rows)
        k = int(math.floor(self.trim_fraction * n))
        if n - 2 * k < 1:
            raise RobustError(f"trimmed mean: trimming {k} at each end of {n} updates leaves none")
        if k == 0:
            return rows.mean(axis=0)
        return np.sort(rows, axis=0)[k:n - k].mean(axis=0)


COMPONENT = TrimmedMean
