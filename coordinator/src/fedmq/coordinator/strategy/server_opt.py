"""Server optimizers: the aggregated change of a round is a pseudo-gradient (Reddi et al. 2021,
"Adaptive Federated Optimization"; Hsu et al. 2019 for FedAvgM).

With ``d`` the round's aggregated change (new mean minus the current model):

* ``fedavg``: ``x += lr * d`` (lr 1 is plain FedAvg)
* ``fedavgm``: ``v = momentum * v + d``; ``x += lr * v``
* ``fedadagrad``: ``m = b1 * m + (1 - b1) * d``; ``v = v + d^2``; ``x += lr * m / (sqrt(v) + tau)``
* ``fedadam``: as fedadagrad with ``v = b2 * v + (1 - b2) * d^2``
* ``fedyogi``: as fedadagrad with ``v = v - (1 - b2) * d^2 * sign(v - d^2)``

``v`` starts at ``tau^2``, as in the paper; no bias correction.
"""

from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

from fedmq.shared.topicmap import Strategy

Weights = Dict[str, np.ndarray]


class ServerOptimizer:
    """Keeps the optimizer's state between rounds; ``step`` returns the next global model."""

    def __init__(self, strategy: Strategy) -> None:
        self.s = strategy
        self.m: Weights = {}
        self.v: Weights = {}

    def moments(self) -> Weights:
        """The optimizer's state as named tensors ("m/<tensor>", "v/<tensor>"), for checkpoints."""
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()}}

    def restore(self, moments: Mapping[str, np.ndarray]) -> None:
        """Take back what ``moments`` returned (after a restart, or to undo a step that was not applied)."""
        self.m, self.v = {}, {}
        for name, t in moments.items():
            moment, _, tensor = name.partition("/")
            (self.m if moment == "m" else self.v)[tensor] = np.array(t, np.float64)

    def step(self, weights: Mapping[str, np.ndarray], change: Mapping[str, np.ndarray]) -> Weights:
        """The next model from the current one and the round's aggregated change (float32 out)."""
        s, out = self.s, {}
        for k, x in weights.items():
            d = np.asarray(change[k], np.float64)
            if s.server_optimizer == "fedavg":
                step = d
            elif s.server_optimizer == "fedavgm":
                m = self.m[k] = s.server_momentum * self.m.get(k, 0.0) + d
                step = m
            else:
                m = self.m[k] = s.beta1 * self.m.get(k, 0.0) + (1.0 - s.beta1) * d
                v = self.v.get(k, np.full_like(d, s.tau ** 2))
                d2 = d * d
                if s.server_optimizer == "fedadagrad":
                    v = v + d2
                elif s.server_optimizer == "fedadam":
                    v = s.beta2 * v + (1.0 - s.beta2) * d2
                else:  # fedyogi
                    v = v - (1.0 - s.beta2) * d2 * np.sign(v - d2)
                self.v[k] = v
                step = m / (np.sqrt(v) + s.tau)
            out[k] = (np.asarray(x, np.float64) + s.server_lr * step).astype(np.float32)
        return out
