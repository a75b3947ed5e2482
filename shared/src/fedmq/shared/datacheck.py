"""Checks a data set against the federation's model, so that a problem is named instead of swallowed.

The same checks run on a node (at start and before every round: its status then carries the problem),
in ``fedmq node check``, and on the coordinator's evaluation set when it loads it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import numpy as np

from fedmq.shared.messages import MAX_PROBLEM_CHARS
from fedmq.shared.topicmap.model import ModelSpec


def normalise_labels(spec: ModelSpec, y: np.ndarray, names: Optional[Mapping[float, str]] = None) -> np.ndarray:
    """Labels as the model's classes spell them: ``9.0`` (as pandas writes floats) or ``"9"`` read as the
    class ``9``; with ``names`` (a stream label's words by the number it stores), ``2.0`` read as the class
    its word names (``kettle``) when the number itself is no class. Labels that match no class are left as
    they are (``label_problem`` names them)."""
    if not spec.is_classifier or len(y) == 0:
        return y
    lookup = {str(c): c for c in spec.classes}
    words = {k: lookup[w] for k, w in (names or {}).items() if w in lookup}

    def one(v: Any) -> Any:
        key = _integral(v)
        if key in lookup:
            return lookup[key]
        return words.get(v, v) if isinstance(v, float) else v

    out = [one(v) for v in y.tolist()]
    return np.asarray(out, dtype=object) if any(isinstance(v, str) for v in out) else np.asarray(out)


def _integral(v: Any) -> str:
    """The key of a label: ``9``, ``9.0`` and ``"9.0"`` are all ``"9"``."""
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return str(v)
    return str(int(f)) if f.is_integer() else str(v)


def data_problem(spec: ModelSpec, x: np.ndarray, y: np.ndarray, min_samples: int = 1) -> Optional[str]:
    """The first reason ``(x, y)`` cannot train or evaluate ``spec``, in a short sentence; None if fine."""
    if x.ndim != 2 or x.shape[1] != spec.features:
        got = x.shape[1] if x.ndim == 2 else "?"
        return f"wrong number of features: the data has {got}, the model takes {spec.features}"
    if len(x) < min_samples:
        return f"too few samples: {len(x)}, at least {min_samples} needed"
    if not np.isfinite(x).all():
        rows = int((~np.isfinite(x)).any(axis=1).sum())
        return f"NaN or Inf in the features of {rows} samples"
    if spec.is_classifier:
        known = {str(c) for c in spec.classes}
        bad = sorted({str(v) for v in y.tolist() if str(v) not in known})
        if bad:
            shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
            return _short(f"labels outside the model's classes: {shown} (classes: "
                          f"{', '.join(map(str, spec.classes))})")
    else:
        try:
            values = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError):
            return "labels must be numbers for a regression model"
        if not np.isfinite(values).all():
            return "NaN or Inf in the labels"
    return None


def checked_data(spec: ModelSpec, x: np.ndarray, y: np.ndarray, min_samples: int = 1,
                 names: Optional[Mapping[float, str]] = None) -> Tuple[np.ndarray, np.ndarray, Optional[str]]:
    """``(x, labels normalised, problem or None)``."""
    y = normalise_labels(spec, y, names)
    return x, y, data_problem(spec, x, y, min_samples)


def _short(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 3] + "..."
