"""Model kinds, their tensor layouts and their numpy forward pass.

Every trainer (numpy, scikit-learn, and later TFLite) reads and writes weights by these names,
so nodes with different trainers can join one federation when their kinds share a layout:

* ``softmax_regression`` and ``sgd_classifier``: ``coef`` (C, F) and ``intercept`` (C,), where C is
  the number of classes (1 for a binary ``sgd_classifier``, as scikit-learn does).
* ``sgd_regressor``: ``coef`` (F,), ``intercept`` (1,).
* ``mlp``, ``mlp_classifier`` and ``tflite``: ``layers.<i>.weight`` (fan_in, fan_out) and
  ``layers.<i>.bias`` (fan_out,), ReLU between layers, softmax output (one logistic unit for a binary
  ``mlp_classifier``; for ``tflite`` the head is ``options.output``: softmax, logistic or linear).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import numpy as np

from fedmq.shared.kinds import LAYERED_KINDS, MODEL_KINDS, spec_problem
from fedmq.shared.topicmap.model import ModelSpec

Weights = Dict[str, np.ndarray]
EVAL_CHUNK = 4096  # samples evaluated at once
Layer = Tuple[np.ndarray, np.ndarray]


def head(spec: ModelSpec) -> str:
    """The output layer and loss: ``softmax`` (cross-entropy), ``logistic`` (binary cross-entropy) or
    ``linear`` (MSE)."""
    if spec.kind == "tflite":
        return str(spec.options.get("output", "softmax"))
    if not spec.is_classifier:
        return "linear"
    return "logistic" if output_units(spec) == 1 else "softmax"


def output_units(spec: ModelSpec) -> int:
    """Width of the output layer."""
    if not spec.is_classifier or (spec.kind == "tflite" and spec.options.get("output") == "logistic"):
        return 1
    if len(spec.classes) == 2 and spec.kind in ("sgd_classifier", "mlp_classifier"):
        return 1
    return len(spec.classes)


def layer_sizes(spec: ModelSpec) -> List[int]:
    """Sizes from the input through the hidden layers to the output."""
    return [spec.features, *spec.hidden, output_units(spec)]


def initial_weights(spec: ModelSpec) -> Weights:
    """Seeded initial weights: zeros for linear models, Glorot-uniform for MLPs."""
    sizes = layer_sizes(spec)
    if not spec.hidden:
        layers = [(np.zeros((sizes[0], sizes[1])), np.zeros(sizes[1]))]
    else:
        rng = np.random.default_rng(spec.seed)
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            layers.append((rng.uniform(-bound, bound, (fan_in, fan_out)), rng.uniform(-bound, bound, fan_out)))
    return from_layers(spec, layers)


def to_layers(spec: ModelSpec, weights: Mapping[str, np.ndarray]) -> List[Layer]:
    """Named weights -> [(W (in, out), b (out,)), ...] as float64."""
    if spec.kind in LAYERED_KINDS:
        n = len(spec.hidden) + 1
        return [
            (np.asarray(weights[f"layers.{i}.weight"], np.float64), np.asarray(weights[f"layers.{i}.bias"], np.float64))
            for i in range(n)
        ]
    coef = np.asarray(weights["coef"], np.float64)
    w = coef.reshape(-1, 1) if coef.ndim == 1 else coef.T
    return [(w, np.asarray(weights["intercept"], np.float64))]


def from_layers(spec: ModelSpec, layers: List[Layer], dtype: type = np.float32) -> Weights:
    """[(W, b), ...] -> named weights in the kind's layout."""
    if spec.kind in LAYERED_KINDS:
        out: Weights = {}
        for i, (w, b) in enumerate(layers):
            out[f"layers.{i}.weight"] = np.asarray(w, dtype)
            out[f"layers.{i}.bias"] = np.asarray(b, dtype)
        return out
    ((w, b),) = layers
    coef = w[:, 0] if spec.kind == "sgd_regressor" else w.T
    return {"coef": np.ascontiguousarray(coef, dtype), "intercept": np.asarray(b, dtype)}


def expected_shapes(spec: ModelSpec) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every tensor a model of this spec has."""
    return {k: v.shape for k, v in initial_weights(spec).items()}


def forward(layers: List[Layer], x: np.ndarray) -> List[np.ndarray]:
    """Activations of every layer (input first); ReLU between layers, raw scores last."""
    acts = [x]
    for i, (w, b) in enumerate(layers):
        z = acts[-1] @ w + b
        acts.append(np.maximum(z, 0.0) if i < len(layers) - 1 else z)
    return acts


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_index(spec: ModelSpec, y: np.ndarray) -> np.ndarray:
    """Map labels to their position in ``spec.classes``; raises ValueError for unknown labels."""
    lookup = {str(c): i for i, c in enumerate(spec.classes)}
    try:
        return np.fromiter(
            (lookup[str(v.item() if hasattr(v, "item") else v)] for v in y), dtype=np.int64, count=len(y)
        )
    except KeyError as exc:
        raise ValueError(f"label {exc.args[0]} is not one of the model's classes {list(spec.classes)}") from None


def targets(spec: ModelSpec, y: np.ndarray) -> np.ndarray:
    """Training targets as a float32 matrix: one-hot (softmax), a 0/1 column (logistic) or the value column (linear)."""
    kind = head(spec)
    if kind == "linear":
        return np.asarray(y, np.float32).reshape(-1, 1)
    idx = class_index(spec, y)
    if kind == "logistic":
        return idx.astype(np.float32).reshape(-1, 1)
    return np.eye(len(spec.classes), dtype=np.float32)[idx]


def class_probabilities(scores: np.ndarray) -> np.ndarray:
    """A classifier's raw scores (n, C) -> class probabilities (n, C); one logistic column gives two classes."""
    if scores.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    return softmax(scores)


def raw_scores(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The output layer's raw scores for ``x`` (already scaled), computed a chunk of rows at a time."""
    layers = to_layers(spec, weights)
    if not len(x):
        return np.zeros((0, layers[-1][1].size))
    return np.concatenate(
        [
            forward(layers, np.asarray(x[i : i + EVAL_CHUNK], np.float64))[-1]  # bounded memory
            for i in range(0, len(x), EVAL_CHUNK)
        ]
    )


def evaluate(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    """Loss and accuracy (classifiers: cross-entropy) or loss and r2 (regressors: MSE) on (x, y)."""
    scores = raw_scores(spec, weights, x)
    if not spec.is_classifier:
        pred = scores[:, 0]
        yt = np.asarray(y, np.float64)
        mse = float(np.mean((pred - yt) ** 2))
        var = float(np.var(yt))
        return {"loss": mse, "r2": 1.0 - mse / var if var > 0 else 0.0}
    idx = class_index(spec, y)
    probs = class_probabilities(scores)
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(idx)), idx], 1e-12, None))))
    acc = float(np.mean(probs.argmax(axis=1) == idx))
    return {"loss": loss, "accuracy": acc}


def spec_from_meta(meta: object) -> ModelSpec:
    """Rebuild and check the ModelSpec a model envelope carries in ``meta.model`` (untrusted input)."""
    if not isinstance(meta, dict):
        raise ValueError("meta.model must be an object")
    kind, features = meta.get("kind"), meta.get("features")
    classes, hidden = meta.get("classes", []), meta.get("hidden", [])
    options, seed = meta.get("options", {}), meta.get("seed", 0)
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    if not isinstance(features, int) or isinstance(features, bool) or not 0 < features <= 10_000_000:
        raise ValueError("features must be a positive integer")
    if not isinstance(classes, list) or not all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in classes):
        raise ValueError("classes must be a list of integers or strings")
    if not isinstance(hidden, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and 0 < h <= 1_000_000 for h in hidden
    ):
        raise ValueError("hidden must be a list of positive integers")
    if not isinstance(options, dict) or not all(isinstance(v, (int, float, str, bool)) for v in options.values()):
        raise ValueError("options must map names to scalars")
    problem = spec_problem(kind, classes, hidden, options)
    if problem:
        raise ValueError(problem)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError("seed must be an integer")
    return ModelSpec(
        kind=kind, features=features, classes=tuple(classes), hidden=tuple(hidden), seed=seed, options=options
    )


def check_weights(spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless ``tensors`` has exactly the names and shapes of ``spec``, as float tensors."""
    expected = expected_shapes(spec)
    if set(tensors) != set(expected):
        raise ValueError(f"tensor names {sorted(tensors)} do not match the model's {sorted(expected)}")
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
        if t.dtype.kind != "f":
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, expected a float type")
