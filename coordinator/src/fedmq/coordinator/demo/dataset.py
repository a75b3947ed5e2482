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


def own_data(path: str, label_column: str, seed: int, test_size: float = 0.2) -> Tuple[Split, Split]:
    """A user's CSV (header row, ``label_column``) or NPZ (arrays x, y) split into train and held-out test
    sets (stratified when every class has two samples or more); numeric labels as integers, others as text."""
    from fedmq.shared.data import CsvSource, NpzSource
    from fedmq.shared.topicmap.model import DataRef

    if path.endswith(".npz"):
        x, y = NpzSource(DataRef("npz", path)).load()
    else:
        x, y = CsvSource(DataRef("csv", path, {"label_column": label_column})).load()
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: NaN or Inf among the features")
    values = [v.item() if hasattr(v, "item") else v for v in y.tolist()]
    if all(isinstance(v, (int, float)) and float(v).is_integer() for v in values):
        y = np.asarray([int(v) for v in values], np.int64)
    else:
        y = np.asarray([str(v) for v in values])
    _, counts = np.unique(y, return_counts=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed,
                                          stratify=y if counts.min() >= 2 else None)
    return (xtr, ytr), (xte, yte)


def dirichlet_split(y: np.ndarray, n_nodes: int, alpha: float, seed: int, min_size: int = 20) -> List[np.ndarray]:
    """Indices per node: for every class, shares drawn from Dirichlet(alpha); redrawn until each node has
    ``min_size``."""
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


def synthetic(alpha: float, beta: float, devices: int, seed: int) -> Tuple[List[Split], Split]:
    """The FedProx paper's Synthetic(alpha, beta) data (Li et al. 2020): per device k, u_k ~ N(0, alpha),
    W_k ~ N(u_k, 1) (60 x 10), b_k ~ N(u_k, 1), B_k ~ N(0, beta), v_k ~ N(B_k, 1) (60), x ~ N(v_k, diag(j^-1.2)),
    y = argmax(x W_k + b_k), n_k = int(lognormal(4, 2)) + 50 samples, split 90/10. Returns each device's
    training split and the pooled test splits."""
    rng = np.random.default_rng(seed)
    dim, classes = 60, 10
    cov = np.array([(j + 1) ** -1.2 for j in range(dim)])
    parts: List[Split] = []
    tests_x, tests_y = [], []
    for _ in range(devices):
        u, b_mean = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
        w = rng.normal(u, 1, (dim, classes))
        b = rng.normal(u, 1, classes)
        v = rng.normal(b_mean, 1, dim)
        n = int(rng.lognormal(4, 2)) + 50
        x = rng.normal(v, np.sqrt(cov), (n, dim)).astype(np.float32)
        y = np.argmax(x @ w + b, axis=1)
        cut = int(0.9 * n)
        parts.append((x[:cut], y[:cut]))
        tests_x.append(x[cut:])
        tests_y.append(y[cut:])
    return parts, (np.concatenate(tests_x), np.concatenate(tests_y))
