"""scikit-learn trainer: SGDClassifier, SGDRegressor and MLPClassifier through ``partial_fit``.

Weights move in and out through ``coef_`` / ``intercept_`` (linear models) and ``coefs_`` /
``intercepts_`` (MLP). Class labels come from the topic map, so every node agrees on the output order
even when its own data lacks some classes. SGD estimators learn sample by sample (scikit-learn has no
mini-batches for them); the MLP uses the round's batch size.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.neural_network import MLPClassifier

from fedmq.node.trainers.base import Trainer
from fedmq.shared.messages import TrainParams
from fedmq.shared.models import Weights, from_layers, initial_weights, to_layers
from fedmq.shared.topicmap import ModelSpec


class SklearnTrainer(Trainer):
    """Wraps a fresh scikit-learn estimator per round, seeded with the global weights."""

    name = "sklearn"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.weights: Weights = initial_weights(spec)
        self.classes = np.asarray(spec.classes) if spec.classes else None

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Keep a copy of the global model; it is pushed into the estimator at the start of ``fit``."""
        self.weights = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}

    def get_weights(self) -> Weights:
        """Weights in the shared layout."""
        return {k: v.copy() for k, v in self.weights.items()}

    def _estimator(self, params: TrainParams, seed: int) -> Any:
        opts = dict(self.spec.options)
        if self.spec.kind == "sgd_classifier":
            return SGDClassifier(loss=opts.get("loss", "log_loss"), alpha=float(opts.get("alpha", 1e-4)),
                                 learning_rate="constant", eta0=params.learning_rate, random_state=seed)
        if self.spec.kind == "sgd_regressor":
            return SGDRegressor(alpha=float(opts.get("alpha", 1e-4)), learning_rate="constant",
                                eta0=params.learning_rate, random_state=seed)
        return MLPClassifier(hidden_layer_sizes=self.spec.hidden, solver="sgd", momentum=0.0,
                             learning_rate_init=params.learning_rate, batch_size=params.batch_size,
                             alpha=float(opts.get("alpha", 1e-4)), random_state=seed)

    def _load(self, est: Any) -> None:
        layers = to_layers(self.spec, self.weights)
        if self.spec.kind == "mlp_classifier":
            est.coefs_ = [w.copy() for w, _ in layers]
            est.intercepts_ = [b.copy() for _, b in layers]
        else:
            (w, b), = layers
            est.coef_ = (w[:, 0] if self.spec.kind == "sgd_regressor" else w.T).copy()
            est.intercept_ = b.copy()

    def _read(self, est: Any) -> Weights:
        if self.spec.kind == "mlp_classifier":
            return from_layers(self.spec, list(zip(est.coefs_, est.intercepts_)))
        coef = np.asarray(est.coef_, np.float64)
        w = coef.reshape(-1, 1) if coef.ndim == 1 else coef.T
        return from_layers(self.spec, [(w, np.asarray(est.intercept_, np.float64))])

    def fit(self, x: np.ndarray, y: np.ndarray, params: TrainParams, rng: np.random.Generator) -> Dict[str, float]:
        """Initialise the estimator's shapes, load the global weights, then one partial_fit per epoch."""
        est = self._estimator(params, int(rng.integers(2**31)))
        xs = np.asarray(x, np.float64)
        ys = np.asarray(y)
        batch = getattr(est, "batch_size", None)
        if batch is not None:
            est.set_params(batch_size=1)
        if self.classes is not None:
            ys = ys.astype(self.classes.dtype)
            est.partial_fit(xs[:1], ys[:1], classes=self.classes)  # builds shapes; weights replaced next
        else:
            est.partial_fit(xs[:1], ys[:1].astype(np.float64))
        if batch is not None:
            est.set_params(batch_size=min(batch, len(xs)))
        self._load(est)
        for _ in range(params.local_epochs):
            order = rng.permutation(len(xs))
            est.partial_fit(xs[order], ys[order])
        self.weights = self._read(est)
        loss = getattr(est, "loss_", None)
        metrics = self.evaluate(xs, ys)
        return {"train_loss": float(loss) if loss is not None else metrics["loss"]}
