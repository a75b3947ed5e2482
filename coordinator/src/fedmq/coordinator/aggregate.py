"""Streaming aggregation: what a group folds its round's updates into, and what it hands its parent.

Every aggregation state is an ``Accumulator``: ``add`` folds in one node's update with its weight, ``merge``
a child group's partial (what the child's ``to_partial`` gave, as it came off the wire), and at the root
``finish`` gives the round's aggregated change. Two implementations:

* ``WeightedSum``: sample-weighted FedAvg as streaming sums, O(model size) whatever the number of updates.
  A group keeps ``sum_k n_k * w_k`` and ``sum_k n_k``; a parent adds its children's sums to its own, and
  only the root divides. So hierarchical FedAvg is exactly flat FedAvg (up to float rounding).
* ``UpdateStack``: every update as a row, O(updates x model size): what a robust rule needs.

Central differential privacy wraps the root's ``WeightedSum`` (strategy/privacy.py: ``PrivateMean``).
"""

from __future__ import annotations

import abc
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from fedmq.coordinator.strategy.vectors import Shapes, flatten, size, unflatten
from fedmq.shared.codecs import Decoded, Sparse

Tensors = Dict[str, np.ndarray]


class Accumulator(abc.ABC):
    """One group's aggregation state for one round."""

    weight: float  # the total weight folded in

    @abc.abstractmethod
    def add(self, tensors: Mapping[str, Decoded], weight: float) -> None:
        """Fold in one node's update (dense or sparse tensors) with ``weight``."""

    @abc.abstractmethod
    def merge(self, partial: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold in a child group's partial: the tensors its ``to_partial`` gave, and its total weight."""

    @abc.abstractmethod
    def to_partial(self) -> Tensors:
        """The tensors this group sends its parent (in a partial envelope)."""

    @abc.abstractmethod
    def finish(self, reference: Optional[Mapping[str, np.ndarray]]) -> Tensors:
        """The round's aggregated change (float64): of the updates themselves when they are changes
        (``reference`` None), else of the updates minus ``reference``, the model they were trained from."""


class WeightedSum(Accumulator):
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

    def merge(self, sums: Mapping[str, np.ndarray], weight: float) -> None:
        """Add a child group's already-weighted sums and its total weight."""
        for name, s in sums.items():
            if name in self.sums:
                self.sums[name] += s
            else:
                self.sums[name] = np.array(s, dtype=np.float64)
        self.weight += weight

    def to_partial(self) -> Tensors:
        """The sums as they are."""
        return dict(self.sums)

    def change_sums(self, reference: Optional[Mapping[str, np.ndarray]]) -> Tensors:
        """The sums of the changes: the sums themselves, or minus the total weight times ``reference``."""
        if reference is None:
            return dict(self.sums)
        return {k: v - self.weight * np.asarray(reference[k], np.float64) for k, v in self.sums.items()}

    def finish(self, reference: Optional[Mapping[str, np.ndarray]]) -> Tensors:
        """The weighted mean change (with ``reference`` None: the weighted mean of the updates)."""
        if self.weight <= 0:
            raise ValueError("no weight to average")
        return {k: v / self.weight for k, v in self.change_sums(reference).items()}


class UpdateStack(Accumulator):
    """Every update of a round as one float32 row each, with its weight: what a robust rule needs.
    Memory is O(updates x model size); groups forward their rows to the root."""

    def __init__(self, shapes: Shapes) -> None:
        self.shapes = shapes
        self.width = size(shapes)
        self.rows: List[np.ndarray] = []
        self.weights: List[float] = []
        self.weight = 0.0

    def add(self, tensors: Mapping[str, Decoded], weight: float) -> None:
        """One node's update (dense or sparse tensors)."""
        self.rows.append(flatten(tensors, self.shapes).astype(np.float32))
        self.weights.append(float(weight))
        self.weight += float(weight)

    def merge(self, partial: Mapping[str, np.ndarray], weight: float) -> None:
        """A child group's forwarded rows (``@rows``) and their weights (``@row_weights``), as ``to_partial``
        gave them (checked on arrival: shapes, dtypes, positive weights)."""
        self.rows.extend(np.asarray(partial["@rows"], np.float32))
        self.weights.extend(float(w) for w in partial["@row_weights"])
        self.weight += float(np.sum(partial["@row_weights"]))

    def to_partial(self) -> Tensors:
        """The rows as one float32 matrix and their weights (float64)."""
        rows, weights = self.arrays()
        return {"@rows": rows, "@row_weights": weights}

    def finish(self, reference: Optional[Mapping[str, np.ndarray]]) -> Tensors:
        """The weighted mean change of the rows (a robust rule replaces this mean at the root)."""
        rows, weights = self.arrays()
        return self.change(rows.astype(np.float64), weights, reference)

    def change(self, rows: np.ndarray, weights: np.ndarray, reference: Optional[Mapping[str, np.ndarray]],
               flat: Optional[np.ndarray] = None) -> Tensors:
        """``flat`` (default: the weighted mean of ``rows``) as named tensors, minus ``reference`` if given."""
        if flat is None:
            flat = (rows * weights[:, None]).sum(axis=0) / weights.sum()
        agg = unflatten(flat, self.shapes)
        return agg if reference is None else {k: agg[k] - np.asarray(reference[k], np.float64) for k in agg}

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
