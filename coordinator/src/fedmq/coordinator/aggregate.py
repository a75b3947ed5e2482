"""Sample-weighted FedAvg as streaming sums: memory is O(model size), whatever the number of updates.

A group keeps ``sum_k n_k * w_k`` and ``sum_k n_k``; a parent adds its children's sums to its own,
and only the root divides. So hierarchical FedAvg is exactly flat FedAvg (up to float rounding).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import numpy as np

from fedmq.coordinator.strategy.vectors import Shapes, flatten, size
from fedmq.shared.codecs import Decoded, Sparse


class WeightedSum:
    """Running weighted sums of named tensors (float64) and the total weight."""

    def __init__(self) -> None:
        self.sums: Dict[str, np.ndarray] = {}
        self.weight = 0.0

    def add(self, tensors: Mapping[str, Decoded], weight: float) -> None:
        """Add ``weight * tensors`` (one node's update, weighted by its sample count); a sparse (top-k)
        tensor is scattered straight into the sums."""
        for name, t in tensors.items():
            if isinstance(t, Sparse):
                total = self.sums.get(name)
                if total is None:
                    total = self.sums[name] = np.zeros(t.shape, np.float64)
                total.reshape(-1)[t.idx] += t.val * weight  # indices are distinct (checked on decode)
            elif name in self.sums:
                self.sums[name] += np.multiply(t, weight, dtype=np.float64)
            else:
                self.sums[name] = np.multiply(t, weight, dtype=np.float64)
        self.weight += weight

    def add_sums(self, sums: Mapping[str, np.ndarray], weight: float) -> None:
        """Add a child group's already-weighted sums and its total weight."""
        for name, s in sums.items():
            if name in self.sums:
                self.sums[name] += s
            else:
                self.sums[name] = np.array(s, dtype=np.float64)
        self.weight += weight

    def mean(self) -> Dict[str, np.ndarray]:
        """The weighted average as float32 tensors; requires a positive total weight."""
        if self.weight <= 0:
            raise ValueError("no weight to average")
        return {name: (s / self.weight).astype(np.float32) for name, s in self.sums.items()}


class UpdateStack:
    """Every update of a round as one float32 row each, with its weight: what a robust rule needs.
    Memory is O(updates x model size); groups forward their rows to the root."""

    def __init__(self, shapes: Shapes) -> None:
        self.shapes = shapes
        self.width = size(shapes)
        self.rows: List[np.ndarray] = []
        self.weights: List[float] = []

    def add(self, tensors: Mapping[str, Decoded], weight: float) -> None:
        """One node's update (dense or sparse tensors)."""
        self.rows.append(flatten(tensors, self.shapes).astype(np.float32))
        self.weights.append(float(weight))

    def add_rows(self, rows: np.ndarray, weights: np.ndarray) -> None:
        """A child group's forwarded rows."""
        self.rows.extend(np.asarray(rows, np.float32))
        self.weights.extend(float(w) for w in weights)

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        """(rows as an n x P float32 matrix, weights as a float64 vector)."""
        rows = np.stack(self.rows) if self.rows else np.zeros((0, self.width), np.float32)
        return rows, np.asarray(self.weights, np.float64)


class MetricSums:
    """Sample-weighted sums of node-reported metrics, mergeable up the tree like the weights."""

    def __init__(self) -> None:
        self.sums: Dict[str, float] = {}
        self.weights: Dict[str, float] = {}

    def add(self, metrics: Mapping[str, float], weight: float) -> None:
        """Add one node's metrics, weighted by its sample count."""
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def merge(self, sums: Mapping[str, float], weights: Mapping[str, float]) -> None:
        """Add a child group's sums."""
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.weights[k] = self.weights.get(k, 0.0) + weights.get(k, 0.0)

    def means(self) -> Dict[str, float]:
        """Weighted mean of each metric."""
        return {k: self.sums[k] / w for k, w in self.weights.items() if w > 0}

    def to_wire(self) -> Dict[str, float]:
        """Flat form for a partial envelope's ``metrics``: ``sum.<k>`` and ``weight.<k>``."""
        out = {f"sum.{k}": v for k, v in self.sums.items()}
        out.update({f"weight.{k}": v for k, v in self.weights.items()})
        return out

    def merge_wire(self, wire: Mapping[str, float]) -> None:
        """Merge the flat form produced by ``to_wire``."""
        sums = {k[4:]: v for k, v in wire.items() if k.startswith("sum.")}
        weights = {k[7:]: v for k, v in wire.items() if k.startswith("weight.")}
        self.merge(sums, weights)
