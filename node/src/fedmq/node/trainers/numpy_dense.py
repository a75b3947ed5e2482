"""Numpy-only trainer for ``softmax_regression``, ``mlp``, ``sgd_regressor`` (linear regression) and
``tflite`` models: mini-batch SGD with optional momentum and L2, on softmax cross-entropy, binary cross-entropy or MSE.

Needs nothing but numpy, for gateways where scikit-learn is too heavy. For ``tflite`` models it runs
exactly the SGD the generated .tflite file runs, so it is also the reference the TFLite trainer is
tested against.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np

from fedmq.node.trainers.base import Trainer, TrainerUnavailable
from fedmq.shared.messages import TrainParams
from fedmq.shared.models import Layer, Weights, forward, from_layers, head, initial_weights, targets, to_layers
from fedmq.shared.topicmap import ModelSpec

SUPPORTED = ("softmax_regression", "mlp", "sgd_regressor", "tflite")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def sgd_step(
    layers: List[Layer],
    x: np.ndarray,
    target: np.ndarray,
    lr: float,
    *,
    kind: str = "softmax",
    l2: float = 0.0,
    momentum: float = 0.0,
    velocity: Optional[List[Layer]] = None,
) -> float:
    """One SGD step on a batch, in place; returns the batch's mean loss before the step.

    ``kind`` is the head: softmax (cross-entropy), logistic (binary cross-entropy) or linear (MSE,
    summed over outputs). L2 adds ``l2/2 * |W|^2`` per weight matrix. With momentum,
    ``v = momentum * v + g`` and ``w -= lr * v`` (``velocity`` is updated in place).
    """
    acts = forward(layers, x)
    z = acts[-1]
    n = len(x)
    if kind == "softmax":
        logp = _log_softmax(z)
        loss = float(-np.mean(np.sum(target * logp, axis=1)))
        delta = (np.exp(logp) - target) / n
    elif kind == "logistic":
        loss = float(np.mean(np.sum(np.maximum(z, 0) - target * z + np.log1p(np.exp(-np.abs(z))), axis=1)))
        delta = (1.0 / (1.0 + np.exp(-z)) - target) / n
    else:
        err = z - target
        loss = float(np.mean(np.sum(err**2, axis=1)))
        delta = 2.0 * err / n
    if l2:
        loss += sum(0.5 * l2 * float(np.sum(w**2)) for w, _ in layers)
    for i in range(len(layers) - 1, -1, -1):
        w, b = layers[i]
        grads = [acts[i].T @ delta + (l2 * w if l2 else 0.0), delta.sum(axis=0)]
        if i > 0:
            delta = (delta @ w.T) * (acts[i] > 0)
        for j, (param, grad) in enumerate(zip((w, b), grads)):
            if momentum and velocity is not None:
                v = velocity[i][j]
                v *= momentum
                v += grad
                grad = v
            param -= lr * grad
    return loss


class NumpyDenseTrainer(Trainer):
    """Dense ReLU networks in plain numpy."""

    name = "numpy"
    supports_proximal = True

    def __init__(self, spec: ModelSpec) -> None:
        if spec.kind not in SUPPORTED:
            raise TrainerUnavailable(f"the numpy trainer handles {', '.join(SUPPORTED)}, not {spec.kind!r}")
        super().__init__(spec)
        self.kind = head(spec)
        self.l2 = float(spec.options.get("l2", 0.0)) if spec.kind == "tflite" else 0.0
        self.momentum = float(spec.options.get("momentum", 0.0)) if spec.kind == "tflite" else 0.0
        self.set_weights(initial_weights(spec))

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy the global model in (as float64 for the arithmetic); momentum buffers restart at zero."""
        self.layers = [(w.copy(), b.copy()) for w, b in to_layers(self.spec, weights)]
        self.velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in self.layers]

    def get_weights(self) -> Weights:
        """Weights as float32 tensors in the shared layout."""
        return from_layers(self.spec, self.layers)

    def step(self, x: np.ndarray, target: np.ndarray, lr: float) -> float:
        """One SGD step on one batch of (features, targets as from ``targets``)."""
        return sgd_step(
            self.layers,
            np.asarray(x, np.float64),
            np.asarray(target, np.float64),
            lr,
            kind=self.kind,
            l2=self.l2,
            momentum=self.momentum,
            velocity=self.velocity,
        )

    def fit(self, x: np.ndarray, y: np.ndarray, params: TrainParams, rng: np.random.Generator) -> Dict[str, float]:
        """Shuffled mini-batch SGD for ``local_epochs`` epochs."""
        xs = np.asarray(x)  # batches become float64 one at a time (step): no float64 copy of the whole set
        t = targets(self.spec, y)
        mu, lr = params.proximal_mu, params.learning_rate
        anchor = [(w.copy(), b.copy()) for w, b in self.layers] if mu else []
        losses = []
        for _ in range(params.local_epochs):
            order = rng.permutation(len(xs))
            for start in range(0, len(xs), params.batch_size):
                idx = order[start : start + params.batch_size]
                prox = [[mu * (p - p0) for p, p0 in zip(layer, a)] for layer, a in zip(self.layers, anchor)]
                losses.append(self.step(xs[idx], t[idx], lr))
                for layer, grads in zip(self.layers, prox):  # FedProx: the gradient of mu/2 |w - w0|^2 at w
                    for p, g in zip(layer, grads):
                        p -= lr * g
        return {"train_loss": float(np.mean(losses)) if losses else 0.0}
