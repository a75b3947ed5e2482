"""FLTrust (Cao et al., NDSS 2021): the coordinator's own data set as the root of trust.

Each round the coordinator trains the global model on its trusted set (the topic map's ``evaluation``) as a
node would, and scores every node's change by how far its direction agrees with that trusted change: the
trust score is the cosine similarity, cut at 0 (a change that points away counts nothing). Each change is
rescaled to the trusted change's norm, so neither a huge change nor a claimed sample count can buy weight,
and the aggregate is the trust-weighted mean of the rescaled changes. With heterogeneous (non-IID) homes an
honest home's change still points roughly the way of the whole, where median-type rules cut honest
minorities away (docs/strategies.md has the figures).
"""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.strategy.rule import RobustError, RobustRule

TINY = 1e-12


class FLTrust(RobustRule):
    """Trust-weighted mean of changes rescaled to the trusted change's norm."""

    name = "fltrust"
    trusted = True

    def aggregate(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Not used: FLTrust needs the trusted change (``aggregate_trusted``)."""
        raise RobustError("fltrust needs the coordinator's trusted change (an evaluation set)")

    def aggregate_trusted(self, changes: np.ndarray, trusted: np.ndarray) -> np.ndarray:
        """sum_i relu(cos(c_i, t)) * c_i * |t| / |c_i|, over the sum of the scores; zero when no change
        agrees with the trusted one (nothing moves the model that round)."""
        anchor = float(np.linalg.norm(trusted))
        norms = np.linalg.norm(changes, axis=1)
        if anchor <= TINY or not len(changes):
            return np.zeros_like(trusted)
        scores = np.maximum(changes @ trusted / (np.maximum(norms, TINY) * anchor), 0.0)
        scores[norms <= TINY] = 0.0
        total = float(scores.sum())
        if total <= 0.0:
            return np.zeros_like(trusted)
        rescaled = changes * (anchor / np.maximum(norms, TINY))[:, None]
        return np.asarray((scores[:, None] * rescaled).sum(axis=0) / total)


COMPONENT = FLTrust
