"""Central differential privacy's aggregate at the root (DP-FedAvg, McMahan et al. 2018): the round's sum of
clipped, equally weighted changes, noised and divided by the number selected (the accountant that tracks
what it spends is ``fedmq.coordinator.strategy.privacy``)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from fedmq.coordinator.aggregate import Accumulator, WeightedSum
from fedmq.shared.codecs import Decoded
from fedmq.shared.topicmap import Privacy


def gaussian_noise(shapes: Dict[str, tuple], std: float) -> Dict[str, np.ndarray]:
    """Independent N(0, std^2) noise for every tensor, from a fresh OS-seeded generator."""
    rng = np.random.default_rng()
    return {k: rng.normal(0.0, std, shape) for k, shape in shapes.items()}


class PrivateMean(Accumulator):
    """DP-FedAvg's aggregate at the root, a wrapper around the round's weighted sum: on ``finish`` the summed
    change gets Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` (central mode) and is
    divided by the number of nodes selected, fixed before anyone trains, so that the count of answers stays
    private. Each change is clipped to ``clip_norm`` and weighs 1 where it arrives, in whichever group
    (the round's norm bound is the privacy bound)."""

    def __init__(self, privacy: Privacy, selected: int, shapes: Dict[str, tuple]) -> None:
        self.inner = WeightedSum()
        self.privacy, self.selected, self.shapes = privacy, selected, shapes
        self.weight = 0.0

    def add(self, tensors: Mapping[str, Decoded], weight: float) -> None:
        """Fold in one node's clipped change."""
        self.inner.add(tensors, weight)
        self.weight = self.inner.weight

    def merge(self, partial: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold in a child group's sums."""
        self.inner.merge(partial, weight)
        self.weight = self.inner.weight

    def to_partial(self) -> Dict[str, np.ndarray]:
        """The plain sums (only the root wraps its sum, and the root sends no partial)."""
        return self.inner.to_partial()

    def finish(self, reference: Optional[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        """The noised summed change over the number selected."""
        sums = self.inner.change_sums(reference)  # DP's sensitivity is bounded for changes, not weights
        if self.privacy.mode == "central":
            noise = gaussian_noise(self.shapes, self.privacy.noise_multiplier * self.privacy.clip_norm)
            sums = {k: v + noise[k] for k, v in sums.items()}
        return {k: v / float(self.selected) for k, v in sums.items()}
