"""FedYogi (Reddi et al. 2021): the second moment moves towards the squared change additively."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.optimizers._adaptive import Adaptive


class FedYogi(Adaptive):
    """``v = v - (1 - b2) * d^2 * sign(v - d^2)``."""

    name = "fedyogi"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Yogi's additive update."""
        return v - (1.0 - self.beta2) * d2 * np.sign(v - d2)


COMPONENT = FedYogi
