"""FedAdam (Reddi et al. 2021): an exponential average of the squared changes."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.optimizers._adaptive import Adaptive


class FedAdam(Adaptive):
    """``v = b2 * v + (1 - b2) * d^2``."""

    name = "fedadam"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """The exponential moving average."""
        return self.beta2 * v + (1.0 - self.beta2) * d2


COMPONENT = FedAdam
