"""Local differential privacy on the node: the change a node sends is clipped to a norm and noised with
Gaussian noise before it leaves the device (the coordinator never sees the exact change)."""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import numpy as np


def privatize(weights: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray], clip_norm: float,
              noise_multiplier: float, rng: Optional[np.random.Generator] = None) -> Dict[str, np.ndarray]:
    """``start + clip(weights - start) + N(0, (noise_multiplier * clip_norm)^2)`` per entry (float32).

    The noise comes from an OS-seeded generator unless ``rng`` is given (tests): it must not be
    predictable from the node's configured seed."""
    rng = rng or np.random.default_rng()
    change = {k: np.asarray(weights[k], np.float64) - np.asarray(v, np.float64) for k, v in start.items()}
    norm = math.sqrt(sum(float(np.vdot(d, d)) for d in change.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    return {k: (np.asarray(start[k], np.float64) + d * scale + rng.normal(0.0, std, d.shape)).astype(np.float32)
            for k, d in change.items()}
