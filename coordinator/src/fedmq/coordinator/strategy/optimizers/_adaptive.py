"""What FedAdagrad, FedAdam and FedYogi share (Reddi et al. 2021): a first moment ``m``, a second moment
``v`` started at ``tau^2`` as in the paper, and the step ``m / (sqrt(v) + tau)``; no bias correction. Each
optimizer says how ``v`` follows the squared change."""

from __future__ import annotations

import abc
from typing import ClassVar, Tuple

import numpy as np

from fedmq.coordinator.strategy.components import Param
from fedmq.coordinator.strategy.optimizer import ServerOptimizer

BETA1 = Param("beta1", float, 0.9, 0.0, 0.999, "decay of the first moment")
BETA2 = Param("beta2", float, 0.99, 0.0, 0.9999, "decay of the second moment")
TAU = Param("tau", float, 1e-3, 1e-12, None, "adaptivity: added to sqrt(v)")


class Adaptive(ServerOptimizer, abc.ABC):
    """``m = b1 * m + (1 - b1) * d``; ``v = second_moment(v, d^2)``; step ``m / (sqrt(v) + tau)``."""

    params: ClassVar[Tuple[Param, ...]] = (BETA1, BETA2, TAU)
    slots = ("m", "v")

    def __init__(self, server_lr: float = 1.0, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau

    def direction(self, tensor: str, change: np.ndarray) -> np.ndarray:
        """The adaptive step, updating both moments."""
        m = self.state["m"][tensor] = self.beta1 * self.state["m"].get(tensor, 0.0) + (1.0 - self.beta1) * change
        v = self.state["v"].get(tensor, np.full_like(change, self.tau ** 2))
        v = self.state["v"][tensor] = self.second_moment(v, change * change)
        return m / (np.sqrt(v) + self.tau)

    @abc.abstractmethod
    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """The new second moment from the old one and the squared change."""
