"""FedAdagrad (Reddi et al. 2021): the second moment sums the squared changes."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.optimizers._adaptive import BETA1, TAU, Adaptive


class FedAdagrad(Adaptive):
    """``v = v + d^2``."""

    name = "fedadagrad"
    params = (BETA1, TAU)

    def __init__(self, server_lr: float = 1.0, beta1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(server_lr, beta1=beta1, tau=tau)

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """The running sum."""
        return v + d2


COMPONENT = FedAdagrad
