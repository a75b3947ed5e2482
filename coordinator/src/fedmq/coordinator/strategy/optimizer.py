"""The interface of a server optimizer, and the registry of installed ones.

The aggregated change of a round is a pseudo-gradient (Reddi et al. 2021, "Adaptive Federated
Optimization"): with ``d`` the round's change (new mean minus the current model) an optimizer returns the
step, and the model moves by ``server_lr * step``. State (moments) is kept per model tensor in named slots,
saved in checkpoints as ``<slot>/<tensor>``. A new optimizer is one module in
``fedmq.coordinator.strategy.optimizers`` (or an entry point in ``fedmq.server_optimizers``).
"""

from __future__ import annotations

import abc
from typing import Dict, Mapping

import numpy as np

from fedmq.coordinator.strategy.components import Component, Registry

Weights = Dict[str, np.ndarray]


class ServerOptimizer(Component, abc.ABC):
    """Keeps the optimizer's state between rounds; ``step`` returns the next global model."""

    slots: tuple = ()  # the names of the per-tensor state it keeps ("m", "v")

    def __init__(self, server_lr: float = 1.0, **params: float) -> None:
        self.lr = server_lr
        self.state: Dict[str, Weights] = {slot: {} for slot in self.slots}

    def moments(self) -> Weights:
        """The optimizer's state as named tensors ("<slot>/<tensor>"), for checkpoints."""
        return {f"{slot}/{k}": v for slot, tensors in self.state.items() for k, v in tensors.items()}

    def restore(self, moments: Mapping[str, np.ndarray]) -> None:
        """Take back what ``moments`` returned (after a restart, or to undo a step that was not applied)."""
        self.state = {slot: {} for slot in self.slots}
        for name, t in moments.items():
            slot, _, tensor = name.partition("/")
            if slot in self.state:
                self.state[slot][tensor] = np.array(t, np.float64)

    def step(self, weights: Mapping[str, np.ndarray], change: Mapping[str, np.ndarray]) -> Weights:
        """The next model from the current one and the round's aggregated change (float32 out)."""
        return {k: (np.asarray(x, np.float64) + self.lr * self.direction(k, np.asarray(change[k], np.float64))
                    ).astype(np.float32) for k, x in weights.items()}

    @abc.abstractmethod
    def direction(self, tensor: str, change: np.ndarray) -> np.ndarray:
        """The step for one tensor from its aggregated change (float64), updating this tensor's state."""


OPTIMIZERS: Registry[ServerOptimizer] = Registry("server_optimizer", "fedmq.coordinator.strategy.optimizers",
                                                 "fedmq.server_optimizers", ServerOptimizer)


def make_optimizer(name: str, server_lr: float, params: Mapping[str, object]) -> ServerOptimizer:
    """The optimizer ``name`` at rate ``server_lr`` with its parameters from a strategy's ``params``."""
    cls = OPTIMIZERS.get(name)
    return cls(server_lr, **cls.arguments(params))
