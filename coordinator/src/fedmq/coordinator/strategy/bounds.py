"""How much one update may count: a cap on its weight and a bound on the norm of its change.

Both are set by the root for each round and sent in its start (``bounds``), so that every group applies the
same ones where updates arrive (the root, edge aggregators, split workers). By default neither is a number
anyone has to guess, and neither is chosen by a single node:

- weight cap: ``WEIGHT_FACTOR`` x the median sample count the online nodes report in their statuses;
- norm bound: the median norm of the changes of the previous applied round (their norms as sent, before any
  clipping). A federation's first round has no previous one: it is a calibration round in which every
  update travels to the root, which clips them at that round's own median.

A minority of nodes cannot move a median far, whatever they claim; docs/security.md says what remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from fedmq.shared.topicmap import Strategy

WEIGHT_FACTOR = 1.0  # the weight cap, as a multiple of the median reported sample count (measured: 2 let two
# attackers claiming huge counts cost 11 points more on a non-IID split, for no gain on a clean run)
# Statistics rounds (federated scaling): exact for fleets whose nodes hold up to 10x the median, and still no
# node counts for more than 10 typical ones in the feature means.
STATS_WEIGHT_FACTOR = 10.0
NORM_FACTOR = 1.0  # the adaptive norm bound, as a multiple of the previous round's median norm
MIN_NORM = 1e-12  # a bound of exactly 0 would freeze the model; raw norms are tracked, so it recovers


@dataclass(frozen=True)
class Bounds:
    """One round's bounds; None where there is none (or, for an adaptive norm, none known yet)."""

    weight: Optional[float] = None
    norm: Optional[float] = None

    def to_wire(self) -> Optional[Dict[str, float]]:
        """The ``bounds`` object of a start message, or None when there are no bounds."""
        wire = {k: v for k, v in (("weight", self.weight), ("norm", self.norm)) if v is not None}
        return wire or None

    @classmethod
    def from_wire(cls, wire: Optional[Mapping[str, float]]) -> "Bounds":
        """The bounds a (validated) start carries."""
        wire = wire or {}
        return cls(weight=wire.get("weight"), norm=wire.get("norm"))


def weight_cap(strategy: Strategy, reported: Sequence[int], factor: float = WEIGHT_FACTOR) -> Optional[float]:
    """The round's weight cap: the fixed ``weight_cap``, else (auto) ``factor`` x the median of the sample
    counts the round's candidates report (those above 0); None when off or nothing is reported."""
    if not strategy.weight_auto:
        return strategy.weight_cap
    counts = [c for c in reported if c > 0]
    return factor * float(np.median(counts)) if counts else None


def next_norm_bound(norms: Sequence[float]) -> Optional[float]:
    """The adaptive norm bound for the round after one whose accepted updates had these change norms."""
    return max(NORM_FACTOR * float(np.median(norms)), MIN_NORM) if len(norms) else None


def round_bounds(strategy: Strategy, reported: Sequence[int], tracked_norm: Optional[float],
                 stats: bool = False) -> Bounds:
    """What a start carries: the weight cap and the norm bound (fixed, or adaptive from ``tracked_norm``);
    for a statistics round, only a looser weight cap (``STATS_WEIGHT_FACTOR`` x the median, when auto)."""
    if stats:
        return Bounds(weight=weight_cap(strategy, reported, STATS_WEIGHT_FACTOR))
    return Bounds(weight=weight_cap(strategy, reported), norm=tracked_norm if strategy.clip_auto else None)


def calibrating(strategy: Strategy, bounds: Bounds, stats: bool) -> bool:
    """True in a training round with an adaptive norm bound and no bound known yet: groups then forward every
    update as it is and the root bounds them with the round's own median (``clip_rows``)."""
    return strategy.clip_auto and bounds.norm is None and not stats


def clip_rows(rows: np.ndarray, reference: Optional[np.ndarray], norms: Sequence[float]) -> np.ndarray:
    """A calibration round's updates (rows, float64) with their changes clipped at the median of ``norms``
    (the changes' norms, in row order); ``reference`` is the flat global model, None when rows are changes."""
    bound = next_norm_bound(norms)
    assert bound is not None
    scale = np.minimum(1.0, bound / np.maximum(np.asarray(norms, np.float64), MIN_NORM))
    if reference is None:
        return rows * scale[:, None]
    return reference[None, :] + (rows - reference[None, :]) * scale[:, None]


def check_norms(norms: object, count: int) -> Optional[List[float]]:
    """A partial's ``norms`` (one finite, non-negative number per node), or None if malformed."""
    if not isinstance(norms, list) or len(norms) != count:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0 for v in norms):
        return None
    return [float(v) for v in norms]
