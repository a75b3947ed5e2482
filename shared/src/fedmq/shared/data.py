"""Data sources: where a node (or the coordinator's held-out set) reads its samples.

A source is a class with a ``kind`` name, a ``read_options`` class method that validates its own keys of
the ``data:`` section (with the file/line/key/fix errors of every fedmq configuration) and a ``load``
method that returns ``(x, y)``. Live sources (``live = True``) also ``start`` and ``stop``: a node loads
them again before every round, so the training set follows what the sensors said recently.

Sources are found through the ``fedmq.data_sources`` entry-point group: another package adds a kind by
declaring ``[project.entry-points."fedmq.data_sources"] mykind = "mypkg.module:MySource"``.
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Any, Dict, Optional, Tuple, Type

import numpy as np

from fedmq.shared.plugins import plugins
from fedmq.shared.topicmap.model import DataRef
from fedmq.shared.topicmap.reader import Reader

GROUP = "fedmq.data_sources"


class DataError(ValueError):
    """A data source that cannot be read as the configuration says."""


# Why a live source drops a reading (docs/data.md): a fixed list, so monitoring labels stay bounded.
READING_DROP_REASONS = ("too large", "not UTF-8", "not JSON", "field missing", "not a number or known state",
                        "wrong type", "not finite", "bad clock", "internal error")


class DataSource:
    """The interface every data source implements (subclass it, or provide the same members)."""

    kind = ""
    live = False  # True: the samples change while the node runs (load again before every round)
    keys: Tuple[str, ...] = ()  # the option keys this kind accepts besides ``kind``
    required: Tuple[str, ...] = ()
    label_names: Dict[float, str] = {}  # a stream label's class words by the number stored for each

    def __init__(self, ref: DataRef) -> None:
        self.ref = ref
        self.options = ref.options

    @classmethod
    def read_options(cls, r: Reader, m: Dict[str, Any], path: str, base_dir: str) -> Dict[str, Any]:
        """Validate this kind's keys of a ``data:`` mapping (recording issues on ``r``); return its options."""
        return {}

    def start(self, log: logging.Logger) -> None:
        """Begin collecting (live sources); file sources do nothing."""

    def stop(self) -> None:
        """Stop collecting and release what ``start`` opened."""

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """Return features (n, F) as float32 and labels (n,)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``fedmq node check``: where the samples come from."""
        return self.ref.path or self.kind

    def counters(self) -> Dict[str, Any]:
        """What a live source took and dropped (``dropped_rows``, ``unlabelled_rows``, ``dropped`` by reason)."""
        return {}

    def files(self) -> Dict[str, str]:
        """Files this source needs, by the configuration key that names them (checked by ``node check``)."""
        return {"path": self.ref.path} if self.ref.path else {}


class _FileSource(DataSource):
    """A file named by ``path`` (relative to the configuration file)."""

    required = ("path",)

    @classmethod
    def read_options(cls, r: Reader, m: Dict[str, Any], path: str, base_dir: str) -> Dict[str, Any]:
        """Read ``path`` and the kind's string options."""
        p = r.value(m, "path", path, str, "")
        options: Dict[str, Any] = {k: r.value(m, k, path, str) for k in cls.keys if k != "path" and k in m}
        options["path"] = os.path.normpath(os.path.join(os.path.abspath(base_dir), p)) if p else ""
        return options


class NpzSource(_FileSource):
    """Arrays ``x_key`` (default ``x``) and ``y_key`` (default ``y``) of a .npz file (no pickles)."""

    kind = "npz"
    keys = ("path", "x_key", "y_key")

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """Read the two arrays."""
        path = self.ref.path
        try:
            with np.load(path, allow_pickle=False) as z:
                return checked(path, z[self.options.get("x_key", "x")], z[self.options.get("y_key", "y")])
        except KeyError as exc:
            raise DataError(f"{path}: no array named {exc.args[0]}") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: {exc}") from None


class CsvSource(_FileSource):
    """A CSV file with a header row; ``label_column`` (default ``label``) is y, every other column is x.
    Numeric labels are read as numbers (``9`` and ``9.0`` alike), others as strings."""

    kind = "csv"
    keys = ("path", "label_column")

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """Read the file; every feature must be numeric."""
        path, label = self.ref.path, self.options.get("label_column", "label")
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except OSError as exc:
            raise DataError(f"{path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
        if not rows or label not in rows[0]:
            raise DataError(f"{path}: header has no column {label!r}")
        li = rows[0].index(label)
        xs, ys = [], []
        for n, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != len(rows[0]):
                raise DataError(f"{path}:{n}: {len(row)} columns, the header has {len(rows[0])}")
            try:
                xs.append([float(v) for i, v in enumerate(row) if i != li])
            except ValueError:
                raise DataError(f"{path}:{n}: a feature is not a number") from None
            ys.append(_label(row[li]))
        y = np.asarray(ys, dtype=object if any(isinstance(v, str) for v in ys) else None)
        return checked(path, np.asarray(xs, dtype=np.float64).reshape(len(xs), -1), y)


def _label(text: str) -> Any:
    """A CSV label: an integer where it is one (``9``, ``9.0``), another number, else the text."""
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() else v


def checked(path: str, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(x as float32, y)`` if the shapes agree; features may still hold NaN (reported as a data problem)."""
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{path}: need x of shape (n, features) and y of shape (n,), got {x.shape} and {y.shape}")
    if x.dtype.kind not in "fiu":
        raise DataError(f"{path}: features must be numbers, not {x.dtype}")
    return x.astype(np.float32), y


_BUILTIN: Dict[str, Type[DataSource]] = {"npz": NpzSource, "csv": CsvSource}
_registered: Dict[str, Type[DataSource]] = {}


def register_source(cls: Type[DataSource]) -> None:
    """Make ``cls.kind`` usable in ``data:`` and ``evaluation:`` sections without an entry point."""
    _registered[cls.kind] = cls


def _entry_point_sources() -> Dict[str, Any]:
    return {ep.name: ep for ep in plugins(GROUP)}


def source_kinds() -> Tuple[str, ...]:
    """Kinds usable in configurations: built in, registered, and installed as entry points."""
    return tuple(sorted({*_BUILTIN, *_registered, *_entry_point_sources()}))


def source_class(kind: str) -> Optional[Type[DataSource]]:
    """The class of a source kind, loading its entry point on first use; None if no such kind."""
    if kind in _registered:
        return _registered[kind]
    ep = _entry_point_sources().get(kind)
    if ep is not None:
        _registered[kind] = ep.load()
        return _registered[kind]
    return _BUILTIN.get(kind)


def open_source(ref: DataRef) -> DataSource:
    """The data source a reference names."""
    cls = source_class(ref.kind)
    if cls is None:
        raise DataError(f"no data source of kind {ref.kind!r} is installed (kinds: {', '.join(source_kinds())})")
    return cls(ref)
