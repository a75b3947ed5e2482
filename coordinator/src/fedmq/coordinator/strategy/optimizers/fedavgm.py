"""FedAvgM (Hsu et al. 2019): server momentum."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.components import Param
from fedmq.coordinator.strategy.optimizer import ServerOptimizer


class FedAvgM(ServerOptimizer):
    """``v = momentum * v + d``; ``x += lr * v`` (``v`` is kept in slot "m")."""

    name = "fedavgm"
    params = (Param("server_momentum", float, 0.9, 0.0, 0.999, "the momentum of the server's step"),)
    slots = ("m",)

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.9) -> None:
        super().__init__(server_lr)
        self.momentum = server_momentum

    def direction(self, tensor: str, change: np.ndarray) -> np.ndarray:
        """The updated momentum."""
        m = self.state["m"][tensor] = self.momentum * self.state["m"].get(tensor, 0.0) + change
        return m


COMPONENT = FedAvgM
