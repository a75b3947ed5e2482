"""FedAvg's server step: the model moves by ``server_lr`` times the round's change (lr 1: plain FedAvg)."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.optimizer import ServerOptimizer


class FedAvg(ServerOptimizer):
    """``x += lr * d``."""

    name = "fedavg"

    def direction(self, tensor: str, change: np.ndarray) -> np.ndarray:
        """The change itself."""
        return change


COMPONENT = FedAvg
