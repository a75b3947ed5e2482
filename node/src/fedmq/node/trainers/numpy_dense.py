"""Numpy-only trainer for ``softmax_regression`` and ``mlp``: mini-batch SGD on softmax cross-entropy.

Needs nothing but numpy, for gateways where scikit-learn is too heavy.
"""

from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np

from fedmq.node.trainers.base import Trainer, TrainerUnavailable
from fedmq.shared.messages import TrainParams
from fedmq.shared.models import Layer, Weights, class_index, forward, from_layers, initial_weights, softmax, to_layers
from fedmq.shared.topicmap import ModelSpec

SUPPORTED = ("softmax_regression", "mlp")


def sgd_step(layers: List[Layer], x: np.ndarray, onehot: np.ndarray, lr: float) -> float:
    """One SGD step on a batch, in place; returns the batch's mean cross-entropy before the step."""
    acts = forward(layers, x)
    probs = softmax(acts[-1])
    loss = float(-np.mean(np.sum(onehot * np.log(np.clip(probs, 1e-12, None)), axis=1)))
    delta = (probs - onehot) / len(x)
    for i in range(len(layers) - 1, -1, -1):
        w, b = layers[i]
        grad_w = acts[i].T @ delta
        grad_b = delta.sum(axis=0)
        if i > 0:
            delta = (delta @ w.T) * (acts[i] > 0)
        w -= lr * grad_w
        b -= lr * grad_b
    return loss


class NumpyDenseTrainer(Trainer):
    """Softmax regression and ReLU MLPs in plain numpy."""

    name = "numpy"

    def __init__(self, spec: ModelSpec) -> None:
        if spec.kind not in SUPPORTED:
            raise TrainerUnavailable(f"the numpy trainer handles {', '.join(SUPPORTED)}, not {spec.kind!r}")
        super().__init__(spec)
        self.layers = to_layers(spec, initial_weights(spec))

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy the global model in (as float64 for the arithmetic)."""
        self.layers = [(w.copy(), b.copy()) for w, b in to_layers(self.spec, weights)]

    def get_weights(self) -> Weights:
        """Weights as float32 tensors in the shared layout."""
        return from_layers(self.spec, self.layers)

    def fit(self, x: np.ndarray, y: np.ndarray, params: TrainParams, rng: np.random.Generator) -> Dict[str, float]:
        """Shuffled mini-batch SGD for ``local_epochs`` epochs."""
        xs = np.asarray(x, np.float64)
        onehot = np.eye(len(self.spec.classes))[class_index(self.spec, y)]
        losses = []
        for _ in range(params.local_epochs):
            order = rng.permutation(len(xs))
            for start in range(0, len(xs), params.batch_size):
                idx = order[start : start + params.batch_size]
                losses.append(sgd_step(self.layers, xs[idx], onehot[idx], params.learning_rate))
        return {"train_loss": float(np.mean(losses)) if losses else 0.0}
