"""The trainer interface: what a node needs from any local training backend (see ``registry`` for how one
is found by name)."""

from __future__ import annotations

import abc
from typing import Dict, Mapping, Optional

import numpy as np

from fedmq.shared.messages import TrainParams
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

    @classmethod
    def create(cls, spec: ModelSpec, model_file: Optional[bytes]) -> "Trainer":
        """A trainer for ``spec``; ``model_file`` is the model's file (a .tflite) where the kind has one.
        TrainerUnavailable when this trainer cannot train that model here."""
        return cls(spec)

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
