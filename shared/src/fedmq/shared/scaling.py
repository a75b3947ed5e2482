"""Federated feature scaling: every node standardises its features with the federation's mean and scale.

Before round 1 (and again on the topic map's schedule) the coordinator runs a statistics round: each
selected node sends, as an ordinary update weighted by its sample count, the per-feature means of x and
of x squared (``STATS_TENSORS``). Groups sum them up the tree like any update (also under secure
aggregation), so the root holds the sample-weighted means over all nodes, from which ``Scaling`` is
made: exactly the centralised mean and standard deviation, without any sample leaving its node.
The scaling travels with the global model (``meta.scaling``), and checkpoints keep it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from fedmq.shared.topicmap.model import ModelSpec

STATS_TENSORS = ("mean", "meansq")
CHUNK = 4096  # rows summed at once
MIN_SCALE = 1e-9  # a constant feature keeps scale 1: it is centred, not blown up


def stats_shapes(features: int) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of a statistics update."""
    return {name: (features,) for name in STATS_TENSORS}


def local_stats(x: np.ndarray) -> Dict[str, np.ndarray]:
    """A node's statistics update: per-feature means of x and of x squared (float64, summed a chunk of rows
    at a time: no float64 copy of the whole set)."""
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    for i in range(0, len(x), CHUNK):
        part = np.asarray(x[i:i + CHUNK], np.float64)
        total += part.sum(axis=0)
        squares += np.einsum("ij,ij->j", part, part)
    n = max(len(x), 1)
    return {"mean": total / n, "meansq": squares / n}


@dataclass(frozen=True)
class Scaling:
    """``x' = (x - mean) / scale`` per feature; ``samples`` is how many samples the statistics came from."""

    mean: Tuple[float, ...]
    scale: Tuple[float, ...]
    samples: float = 0.0

    @classmethod
    def from_means(cls, means: Mapping[str, np.ndarray], samples: float) -> "Scaling":
        """The scaling from sample-weighted means of x and x squared over the whole federation."""
        mean = np.asarray(means["mean"], np.float64)
        var = np.maximum(np.asarray(means["meansq"], np.float64) - mean * mean, 0.0)
        std = np.sqrt(var)
        return cls(tuple(mean.tolist()), tuple(np.where(std > MIN_SCALE, std, 1.0).tolist()), float(samples))

    def apply(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Scaled features as float32: a new array, or ``out`` (which may be ``x`` itself, float32)."""
        out = np.subtract(np.asarray(x, np.float32), np.asarray(self.mean, np.float32), out=out, dtype=np.float32)
        out /= np.asarray(self.scale, np.float32)
        return out

    def to_meta(self) -> Dict[str, Any]:
        """JSON form (model envelope ``meta.scaling``, checkpoint state)."""
        return {"mean": list(self.mean), "scale": list(self.scale), "samples": self.samples}

    @classmethod
    def from_meta(cls, meta: Any, features: int) -> Optional["Scaling"]:
        """Parse and check an untrusted ``meta.scaling`` (None stays None); raise ValueError if malformed."""
        if meta is None:
            return None
        if not isinstance(meta, dict):
            raise ValueError("scaling must be an object")
        mean, scale, samples = meta.get("mean"), meta.get("scale"), meta.get("samples", 0.0)
        for name, v in (("mean", mean), ("scale", scale)):
            if not isinstance(v, list) or len(v) != features or not all(_finite(e) for e in v):
                raise ValueError(f"scaling.{name} must be {features} finite numbers")
        assert isinstance(mean, list) and isinstance(scale, list)  # checked just above
        if not all(float(s) > 0 for s in scale):
            raise ValueError("scaling.scale must be positive")
        if not _finite(samples) or float(samples) < 0:
            raise ValueError("scaling.samples must be a number >= 0")
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in scale), float(samples))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rescale_first_layer(spec: ModelSpec, layers: List[Tuple[np.ndarray, np.ndarray]], old: Optional[Scaling],
                        new: Scaling) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The same function of the raw features under ``new`` scaling as ``layers`` compute under ``old``
    (no scaling when None): the first layer's weights and bias absorb the change, so a federation can
    refresh its scaling mid-way without losing what the model learned."""
    (w, b), rest = layers[0], layers[1:]
    m_old = np.asarray(old.mean) if old else np.zeros(spec.features)
    s_old = np.asarray(old.scale) if old else np.ones(spec.features)
    m_new, s_new = np.asarray(new.mean), np.asarray(new.scale)
    # w.T ((x - m_old) / s_old) = w'.T ((x - m_new) / s_new) + (b' - b) for every x:
    ratio = (s_new / s_old)[:, None]
    w_new = w * ratio
    b_new = b + ((m_new - m_old) / s_old) @ w
    return [(w_new, b_new), *rest]
