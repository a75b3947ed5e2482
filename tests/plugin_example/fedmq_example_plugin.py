"""An example fedmq plug-in, installed as its own distribution (tests/plugin_example): a data source, a
trainer, a robust rule and a server optimizer, each a small class behind fedmq's interfaces. Every component
notes its use in the file named by FEDMQ_PLUGIN_LOG, so a test can tell it ran."""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import numpy as np

from fedmq.coordinator.strategy.components import Param
from fedmq.coordinator.strategy.optimizer import ServerOptimizer
from fedmq.coordinator.strategy.rule import RobustRule
from fedmq.node.trainers.numpy_dense import NumpyDenseTrainer
from fedmq.shared.data import DataSource
from fedmq.shared.topicmap.reader import Reader


def _note(what: str) -> None:
    with open(os.environ["FEDMQ_PLUGIN_LOG"], "a", encoding="utf-8") as fh:
        fh.write(f"{what} {os.getpid()}\n")


class BlobSource(DataSource):
    """``data: {kind: blobs, seed: 3, samples: 80}``: separable Gaussian blobs, generated on the node."""

    kind = "blobs"
    keys = ("seed", "samples")

    @classmethod
    def read_options(cls, r: Reader, m: Dict[str, Any], path: str, base_dir: str) -> Dict[str, Any]:
        return {"seed": r.value(m, "seed", path, int, 0, minimum=0),
                "samples": r.value(m, "samples", path, int, 100, minimum=1, maximum=100_000)}

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        _note("source")
        rng = np.random.default_rng(self.options["seed"])
        centers = np.random.default_rng(1234).normal(0, 3, (3, 8))
        y = rng.integers(0, 3, self.options["samples"])
        return (centers[y] + rng.normal(0, 1, (len(y), 8))).astype(np.float32), y


class NotingTrainer(NumpyDenseTrainer):
    """The numpy trainer, noting every fit."""

    name = "noting"

    def fit(self, x, y, params, rng):  # type: ignore[no-untyped-def]
        _note("trainer")
        return super().fit(x, y, params, rng)


class CoordinateTrim(RobustRule):
    """The mean of each coordinate without its ``cut`` largest and smallest values."""

    name = "coordinate_trim"
    params = (Param("cut", int, 0, 0, 10, "how many values to drop at each end"),)

    def __init__(self, cut: int) -> None:
        self.cut = cut

    def aggregate(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        _note(f"rule cut={self.cut}")
        return np.sort(rows, axis=0)[self.cut:len(rows) - self.cut].mean(axis=0)


class Damped(ServerOptimizer):
    """``x += lr * damping * d``."""

    name = "damped"
    params = (Param("damping", float, 1.0, 0.0, 1.0, "how much of the change to apply"),)

    def __init__(self, server_lr: float = 1.0, damping: float = 1.0) -> None:
        super().__init__(server_lr)
        self.damping = damping

    def direction(self, tensor: str, change: np.ndarray) -> np.ndarray:
        _note(f"optimizer damping={self.damping}")
        return self.damping * change
