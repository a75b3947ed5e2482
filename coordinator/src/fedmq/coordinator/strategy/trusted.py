"""The trusted change of a round: the global model trained on the coordinator's own data set with the round's
training settings, as a node trains (rules with ``trusted = True``, such as FLTrust, score updates by it)."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from fedmq.coordinator.strategy.vectors import flatten
from fedmq.node.trainers import make_trainer
from fedmq.shared.messages import TrainParams
from fedmq.shared.models import expected_shapes
from fedmq.shared.topicmap import ModelSpec


def trusted_change(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                   params: TrainParams, seed: int, model_file: Optional[bytes] = None) -> np.ndarray:
    """``weights`` trained on ``(x, y)`` minus ``weights``, flat (float64). The data is the coordinator's (its
    evaluation set, already scaled like the nodes' samples); the same seed gives the same change."""
    trainer = make_trainer("auto", spec, model_file)
    trainer.set_weights(weights)
    trainer.fit(x, y, params, np.random.default_rng(seed))
    shapes = expected_shapes(spec)
    return flatten(trainer.get_weights(), shapes).astype(np.float64) - flatten(weights, shapes).astype(np.float64)
