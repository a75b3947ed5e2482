"""A model's named tensors as one flat float64 vector (in the model's tensor order) and back."""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import numpy as np

from fedmq.shared.codecs import Decoded, Sparse

Shapes = Mapping[str, Tuple[int, ...]]


def size(shapes: Shapes) -> int:
    """Number of parameters."""
    return sum(math.prod(s) for s in shapes.values())


def flatten(tensors: Mapping[str, Decoded], shapes: Shapes) -> np.ndarray:
    """The tensors (dense or sparse) concatenated in ``shapes`` order."""
    vec = np.zeros(size(shapes), np.float64)
    offset = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        t = tensors[name]
        if isinstance(t, Sparse):
            vec[offset + t.idx] = t.val
        else:
            vec[offset:offset + n] = np.asarray(t).reshape(-1)
        offset += n
    return vec


def unflatten(vec: np.ndarray, shapes: Shapes, dtype: type = np.float64) -> Dict[str, np.ndarray]:
    """Named tensors of ``shapes`` from a flat vector."""
    out: Dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = vec[offset:offset + n].reshape(shape).astype(dtype)
        offset += n
    return out
