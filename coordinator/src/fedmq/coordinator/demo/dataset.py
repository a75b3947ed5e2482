"""The demo's data: scikit-learn's bundled digits, split non-IID over nodes with a seeded Dirichlet."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Split = Tuple[np.ndarray, np.ndarray]


def digits(seed: int, test_size: float = 0.2) -> Tuple[Split, Split]:
    """Train and held-out test sets; pixels scaled by their fixed range (0..16), no data-dependent statistics."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return (xtr, ytr), (xte, yte)


def dirichlet_split(y: np.ndarray, n_nodes: int, alpha: float, seed: int, min_size: int = 20) -> List[np.ndarray]:
    """Indices per node: for every class, shares drawn from Dirichlet(alpha); redrawn until each node has ``min_size``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(1000):
        parts: List[List[int]] = [[] for _ in range(n_nodes)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(n_nodes, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for node, chunk in enumerate(np.split(idx, cuts)):
                parts[node].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.asarray(sorted(p)) for p in parts]
    raise ValueError(f"cannot give each of {n_nodes} nodes {min_size} samples with alpha={alpha}")
