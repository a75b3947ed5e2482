"""TFLite trainer: runs a training-capable .tflite file through its signature runners.

The file must expose ``train(x, y) -> loss``, ``infer(x) -> output``, ``get_weights() -> {name: tensor}``
and ``set_weights({name: tensor}) -> status``, and may expose ``train_prox(x, y, mu, anchor.<name>...)``
(FedProx inside the graph, so that the optimiser's momentum carries on). Weights are always addressed by
name.
"""

from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional

import numpy as np

from fedmq.node.trainers.base import Trainer, TrainerUnavailable
from fedmq.node.trainers.tflite_runtime import find_interpreter
from fedmq.shared.messages import TrainParams
from fedmq.shared.models import Weights, targets
from fedmq.shared.topicmap import ModelSpec

SIGNATURES = ("train", "infer", "get_weights", "set_weights")
OPTIONAL = ("train_prox",)
log = logging.getLogger("fedmq.node.tflite")


class TfliteModel:
    """One interpreter with the four signature runners of a training-capable model."""

    def __init__(self, model: bytes) -> None:
        interpreter_cls, self.runtime = find_interpreter()
        self.interpreter = interpreter_cls(model_content=model)
        found = self.interpreter.get_signature_list()
        missing = [s for s in SIGNATURES if s not in found]
        if missing:
            raise ValueError(f"the model lacks the signatures {missing} (it has {sorted(found)})")
        self.signatures = found
        self.runners = {s: self.interpreter.get_signature_runner(s) for s in SIGNATURES + OPTIONAL if s in found}

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One step of the model's own optimiser on one batch; the loss before the step."""
        return float(
            np.asarray(self.runners["train"](x=np.asarray(x, np.float32), y=np.asarray(y, np.float32))["loss"])
        )

    def train_prox_step(self, x: np.ndarray, y: np.ndarray, mu: float, anchor: Mapping[str, np.ndarray]) -> float:
        """One step followed by FedProx's proximal step towards ``anchor``, momentum kept; the loss before."""
        feeds = {f"anchor.{k}": np.ascontiguousarray(v, np.float32) for k, v in anchor.items()}
        out = self.runners["train_prox"](
            x=np.asarray(x, np.float32), y=np.asarray(y, np.float32), mu=np.asarray([mu], np.float32), **feeds
        )
        return float(np.asarray(out["loss"]))

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The model's output for a batch."""
        return np.asarray(self.runners["infer"](x=np.asarray(x, np.float32))["output"])

    def get_weights(self) -> Weights:
        """Every weight by name (copies)."""
        return {k: np.array(v, np.float32) for k, v in self.runners["get_weights"]().items()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Assign every weight by name."""
        self.runners["set_weights"](**{k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()})


class TfliteTrainer(Trainer):
    """Trains a ``tflite`` model kind with the .tflite file the coordinator distributed."""

    name = "tflite"
    supports_proximal = True

    def __init__(self, spec: ModelSpec, model: bytes) -> None:
        super().__init__(spec)
        self.model = TfliteModel(model)
        self._warned = False

    @classmethod
    def create(cls, spec: ModelSpec, model_file: Optional[bytes]) -> "TfliteTrainer":
        """Needs a ``tflite`` model kind and its file."""
        if spec.kind != "tflite" or model_file is None:
            raise TrainerUnavailable(f"the tflite trainer needs a tflite model and its file, not {spec.kind!r}")
        return cls(spec, model_file)

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load the global model into the interpreter's variables."""
        self.model.set_weights(weights)

    def get_weights(self) -> Weights:
        """The interpreter's variables, by name."""
        return self.model.get_weights()

    def fit(self, x: np.ndarray, y: np.ndarray, params: TrainParams, rng: np.random.Generator) -> Dict[str, float]:
        """Shuffled mini-batches through ``train``; the learning rate is the one built into the file."""
        xs = np.asarray(x, np.float32)
        t = targets(self.spec, y)
        mu, lr = params.proximal_mu, params.learning_rate
        anchor = self.model.get_weights() if mu else {}
        inside = "train_prox" in self.model.runners
        if mu and not inside and not self._warned:
            self._warned = True
            log.warning(
                "this model file has no train_prox signature (built by an older coordinator): FedProx "
                "runs outside the graph, which resets the optimiser's momentum at every step"
            )
        losses = []
        for _ in range(params.local_epochs):
            order = rng.permutation(len(xs))
            for start in range(0, len(xs), params.batch_size):
                idx = order[start : start + params.batch_size]
                if mu and inside:
                    losses.append(self.model.train_prox_step(xs[idx], t[idx], mu, anchor))
                    continue
                before = self.model.get_weights() if mu else {}
                losses.append(self.model.train_step(xs[idx], t[idx]))
                if mu:  # FedProx outside the graph: the proximal gradient at the pre-step weights, same lr
                    after = self.model.get_weights()
                    self.model.set_weights({k: after[k] - lr * mu * (before[k] - anchor[k]) for k in after})
        return {"train_loss": float(np.mean(losses)) if losses else 0.0}
