"""The trainer interface and the factory that picks an implementation for a model kind."""

from __future__ import annotations

import abc
from typing import Dict, Mapping, Optional

import numpy as np

from fedmq.shared.messages import TrainParams
from fedmq.shared.kinds import SKLEARN_KINDS
from fedmq.shared.models import Weights, evaluate
from fedmq.shared.topicmap import ModelSpec


class TrainerUnavailable(RuntimeError):
    """The trainer a model needs cannot run here (a missing optional dependency); says what to install."""


class Trainer(abc.ABC):
    """Trains one model kind locally. Weights go in and out as named tensors, never by position."""

    name = "abstract"
    supports_proximal = False  # True where fit() adds FedProx's term for params.proximal_mu

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load the global model."""

    @abc.abstractmethod
    def get_weights(self) -> Weights:
        """Current local weights, by name."""

    @abc.abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, params: TrainParams, rng: np.random.Generator) -> Dict[str, float]:
        """Run ``params.local_epochs`` epochs of local training; return training metrics (``train_loss``).
        Trainers that support it add FedProx's ``params.proximal_mu / 2 * |w - w_start|^2`` to the loss."""

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> Dict[str, float]:
        """Loss and accuracy (or r2) of the current weights on (x, y)."""
        return evaluate(self.spec, self.get_weights(), x, y)


def make_trainer(backend: str, spec: ModelSpec, tflite_file: Optional[bytes] = None) -> Trainer:
    """The trainer for ``spec``: ``auto`` picks scikit-learn for its kinds, TFLite for ``tflite``
    (which needs the model file), numpy for the rest."""
    if backend == "auto":
        backend = "sklearn" if spec.kind in SKLEARN_KINDS else "tflite" if spec.kind == "tflite" else "numpy"
    if backend == "tflite":
        if spec.kind != "tflite" or tflite_file is None:
            raise TrainerUnavailable(f"the tflite trainer needs a tflite model and its file, not {spec.kind!r}")
        from fedmq.node.trainers.tflite_model import TfliteTrainer

        return TfliteTrainer(spec, tflite_file)
    if backend == "numpy":
        from fedmq.node.trainers.numpy_dense import NumpyDenseTrainer

        return NumpyDenseTrainer(spec)
    if backend == "sklearn":
        try:
            from fedmq.node.trainers.sklearn_models import SklearnTrainer
        except ImportError:
            raise TrainerUnavailable(
                f"model kind {spec.kind!r} needs scikit-learn, which is not installed here: "
                "pip install 'fedmq-node[sklearn]'") from None
        return SklearnTrainer(spec)
    raise TrainerUnavailable(f"unknown trainer {backend!r}")
