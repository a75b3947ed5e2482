"""Data sources: where a node (or the coordinator's held-out set) reads its samples.

A source returns ``(x, y)`` as numpy arrays. Implement ``DataSource`` and register it with
``register_source`` to add another kind (a database, a sensor log...).
"""

from __future__ import annotations

import csv
from typing import Callable, Dict, Protocol, Tuple

import numpy as np

from fedmq.shared.topicmap.model import DataRef


class DataError(ValueError):
    """A data file that cannot be read as the configuration says."""


class DataSource(Protocol):
    """Something that yields the local samples."""

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """Return features (n, F) as float32 and labels (n,)."""


class NpzSource:
    """Arrays ``x_key`` (default ``x``) and ``y_key`` (default ``y``) of a .npz file (no pickles)."""

    def __init__(self, ref: DataRef) -> None:
        self.path = ref.path
        self.x_key = ref.options.get("x_key", "x")
        self.y_key = ref.options.get("y_key", "y")

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """Read the two arrays."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                return _checked(self.path, z[self.x_key], z[self.y_key])
        except KeyError as exc:
            raise DataError(f"{self.path}: no array named {exc.args[0]}") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path}: {exc}") from None


class CsvSource:
    """A CSV file with a header row; ``label_column`` (default ``label``) is y, every other column is x."""

    def __init__(self, ref: DataRef) -> None:
        self.path = ref.path
        self.label = ref.options.get("label_column", "label")

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """Read the file; every feature must be numeric."""
        try:
            with open(self.path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except OSError as exc:
            raise DataError(f"{self.path}: {exc.strerror}") from None
        if not rows or self.label not in rows[0]:
            raise DataError(f"{self.path}: header has no column {self.label!r}")
        li = rows[0].index(self.label)
        xs, ys = [], []
        for n, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            try:
                xs.append([float(v) for i, v in enumerate(row) if i != li])
            except ValueError:
                raise DataError(f"{self.path}:{n}: a feature is not a number") from None
            label = row[li]
            ys.append(int(label) if label.lstrip("-").isdigit() else label)
        return _checked(self.path, np.asarray(xs), np.asarray(ys))


def _checked(path: str, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{path}: need x of shape (n, features) and y of shape (n,), got {x.shape} and {y.shape}")
    if x.dtype.kind not in "fiu" or not np.isfinite(x).all():
        raise DataError(f"{path}: features must be finite numbers")
    return x.astype(np.float32), y


_SOURCES: Dict[str, Callable[[DataRef], DataSource]] = {"npz": NpzSource, "csv": CsvSource}


def register_source(kind: str, factory: Callable[[DataRef], DataSource]) -> None:
    """Make ``kind`` usable in ``data:`` and ``evaluation:`` sections."""
    _SOURCES[kind] = factory


def source_kinds() -> Tuple[str, ...]:
    """Kinds usable in configurations."""
    return tuple(_SOURCES)


def open_source(ref: DataRef) -> DataSource:
    """The data source a reference names."""
    return _SOURCES[ref.kind](ref)
