"""Features and labels computed from the stored rows when a round's training set is built.

A feature is declared per signal: its current value, lags, rolling mean/min/max/std or slope over a
window of periods, or the time of day / day of week as sin and cos. A sample needs an unbroken run of
rows as long as its longest window or lag; the label is a signal's value in the same row (a class) or
``horizon_s`` later (forecasting: the sample is complete once that row exists).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fedmq.shared.topicmap.reader import Reader, join_path

WINDOW_KINDS = ("mean", "min", "max", "std", "slope")
SIGNAL_KINDS = ("value", "lag", *WINDOW_KINDS)
TIME_KINDS = ("time_of_day", "day_of_week")
FEATURE_KEYS = ("signal", "kind", "steps", "window")
MAX_WINDOW = 10_000
BLOCK = 8192  # rows whose features are computed together (bounds the temporaries, not the result)


@dataclass(frozen=True)
class Feature:
    """One declared feature; ``width`` columns of x."""

    kind: str
    signal: str = ""
    steps: Tuple[int, ...] = ()
    window: int = 1

    @property
    def width(self) -> int:
        """Columns this feature adds to x."""
        return len(self.steps) if self.kind == "lag" else 2 if self.kind in TIME_KINDS else 1

    @property
    def history(self) -> int:
        """Earlier rows a sample needs."""
        return max(self.steps) if self.kind == "lag" else self.window - 1 if self.kind in WINDOW_KINDS else 0

    def names(self) -> List[str]:
        """Column names, e.g. ``temp``, ``temp.lag3``, ``co2.slope6``, ``time_of_day.sin``."""
        if self.kind in TIME_KINDS:
            return [f"{self.kind}.sin", f"{self.kind}.cos"]
        if self.kind == "lag":
            return [f"{self.signal}.lag{s}" for s in self.steps]
        return [self.signal if self.kind == "value" else f"{self.signal}.{self.kind}{self.window}"]


@dataclass(frozen=True)
class Label:
    """Where a sample's label comes from: ``signal``'s value now, or ``horizon_s`` later."""

    signal: str
    horizon_s: float = 0.0


def read_features(r: Reader, seq: Any, path: str, line: Optional[int], signals: Sequence[str]) -> List[Feature]:
    """The ``features:`` list (validated against the declared signal names)."""
    if not isinstance(seq, list) or not seq:
        r.error(line, path, "must be a non-empty list of features",
                "e.g. features: [{signal: temp}, {signal: temp, kind: mean, window: 6}, {kind: time_of_day}]")
        return []
    out = []
    for i, item in enumerate(seq):
        p = f"{path}[{i}]"
        m = r.mapping(item, p, r.item_line(seq, i), FEATURE_KEYS)
        if m is None:
            continue
        kind = r.value(m, "kind", p, str, "value", choices=(*SIGNAL_KINDS, *TIME_KINDS))
        signal = r.value(m, "signal", p, str, "")
        if kind in TIME_KINDS:
            if signal:
                r.error(r.line_of(m, "signal"), join_path(p, "signal"), f"{kind} takes no signal", "remove signal")
            out.append(Feature(kind))
            continue
        if signal not in signals:
            r.error(r.line_of(m, "signal") if "signal" in m else r.line_of(m, ""), join_path(p, "signal"),
                    f"names no declared signal ({signal!r})", f"one of: {', '.join(signals)}")
        steps = r.value(m, "steps", p, (int, list), [1] if kind == "lag" else [])
        steps = [steps] if isinstance(steps, int) else steps
        if kind == "lag" and (not steps or not all(isinstance(s, int) and not isinstance(s, bool)
                                                   and 0 < s <= MAX_WINDOW for s in steps)):
            r.error(r.line_of(m, "steps"), join_path(p, "steps"), "lags must be positive whole numbers of periods",
                    "e.g. steps: [1, 2, 3]")
            steps = [1]
        window = r.value(m, "window", p, int, 2 if kind in WINDOW_KINDS else 1,
                         minimum=2 if kind in WINDOW_KINDS else 1, maximum=MAX_WINDOW,
                         fix="the number of sampling periods the statistic covers, e.g. window: 6")
        out.append(Feature(kind, signal, tuple(steps) if kind == "lag" else (), window))
    return out


def assemble(features: Sequence[Feature], label: Optional[Label], signals: Sequence[str], t: np.ndarray,
             v: np.ndarray, period_s: float, tz: Optional[dt.tzinfo]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, times)`` of every complete sample in rows ``(t, v)``: its history unbroken and, with a
    ``label``, labelled (a row whose label is missing, NaN, trains nothing); without one, y is empty."""
    n = len(t)
    width = sum(f.width for f in features)
    need = max((f.history for f in features), default=0)
    if n == 0:
        return np.zeros((0, width), np.float32), np.zeros(0), np.zeros(0, np.int64)
    # run[i]: rows in the unbroken run of periods that ends at row i
    breaks = np.concatenate([[True], np.diff(t) != int(period_s)])
    starts = np.maximum.accumulate(np.where(breaks, np.arange(n), 0))
    ok = (np.arange(n) - starts) >= need
    col = {name: v[:, i] for i, name in enumerate(signals)}
    lab = col[label.signal] if label is not None else np.zeros(n)
    if label is not None and label.horizon_s:
        j = np.searchsorted(t, t + int(label.horizon_s))
        found = j < n
        found[found] &= t[j[found]] == t[found] + int(label.horizon_s)
        ok &= found
        y = np.where(found, lab[np.minimum(j, n - 1)], np.nan)
    else:
        y = lab
    ok &= np.isfinite(y)
    x = np.empty((int(ok.sum()), width), np.float32)  # one copy of x in memory, filled a block of rows at a time
    done = 0
    for start in range(0, n, BLOCK):  # each block with the history its windows and lags need before it
        end = min(n, start + BLOCK)
        lo = max(0, start - need)
        keep = ok[start:end]
        rows = int(keep.sum())
        if not rows:
            continue
        c = 0
        for f in features:
            signal = col.get(f.signal)
            for column in _columns(f, None if signal is None else signal[lo:end], t[lo:end], tz):
                x[done:done + rows, c] = column[start - lo:][keep]
                c += 1
        done += rows
    return x, y[ok], t[ok]


def latest(features: Sequence[Feature], signals: Sequence[str], t: np.ndarray, v: np.ndarray, period_s: float,
           tz: Optional[dt.tzinfo]) -> Optional[np.ndarray]:
    """The feature vector of the newest row ``t[-1]`` (no label needed), or None when the unbroken run of
    rows that ends there is shorter than the longest window or lag."""
    if not len(t):
        return None
    x, _, times = assemble(features, None, signals, t, v, period_s, tz)
    return x[-1] if len(times) and times[-1] == t[-1] else None


def history(features: Sequence[Feature]) -> int:
    """Rows a sample needs: its own and the earlier ones its longest window or lag covers."""
    return 1 + max((f.history for f in features), default=0)


def _columns(f: Feature, s: Optional[np.ndarray], t: np.ndarray, tz: Optional[dt.tzinfo]) -> List[np.ndarray]:
    if f.kind in TIME_KINDS:
        frac = _time_fraction(t, tz, week=f.kind == "day_of_week")
        return [np.sin(2 * np.pi * frac), np.cos(2 * np.pi * frac)]
    assert s is not None
    if f.kind == "value":
        return [s]
    if f.kind == "lag":
        return [_shifted(s, k) for k in f.steps]
    return [_window(f.kind, np.asarray(s, np.float64), f.window)]


def _window(kind: str, s: np.ndarray, w: int) -> np.ndarray:
    """A rolling statistic over the last ``w`` values (NaN before there are ``w``), in O(n) memory:
    mean, std and slope from running sums, min and max over a strided view (no n x w copy)."""
    out = np.full(len(s), np.nan)
    if len(s) < w:
        return out
    if kind in ("min", "max"):
        out[w - 1:] = getattr(np, kind)(sliding_window_view(s, w), axis=1)
        return out
    shift = float(s.mean())  # running sums of values near 0 keep their precision
    s = s - shift
    c1 = np.concatenate([[0.0], np.cumsum(s)])
    total = c1[w:] - c1[:-w]
    mean = total / w
    if kind == "mean":
        out[w - 1:] = mean + shift
    elif kind == "std":
        c2 = np.concatenate([[0.0], np.cumsum(s * s)])
        out[w - 1:] = np.sqrt(np.maximum((c2[w:] - c2[:-w]) / w - mean * mean, 0.0))
    else:  # slope: least squares against 0..w-1, per period
        k = np.arange(len(s), dtype=np.float64)
        ck = np.concatenate([[0.0], np.cumsum(k * s)])
        start = np.arange(len(s) - w + 1, dtype=np.float64)
        weighted = (ck[w:] - ck[:-w]) - start * total  # sum of j * s over the window, j = 0..w-1
        xc = np.arange(w) - (w - 1) / 2.0
        out[w - 1:] = (weighted - (w - 1) / 2.0 * total) / float(xc @ xc)
    return out


def _shifted(s: np.ndarray, k: int) -> np.ndarray:
    return np.concatenate([np.full(min(k, len(s)), np.nan), s[: max(0, len(s) - k)]])


def _time_fraction(t: np.ndarray, tz: Optional[dt.tzinfo], *, week: bool) -> np.ndarray:
    """Where each time falls in its local day (or week, Monday 00:00 = 0), as a fraction. The zone's UTC
    offset is looked up once per hour of the data (offsets change on the hour), not once per sample."""
    hours, inverse = np.unique(t // 3600, return_inverse=True)
    offsets = np.array([_offset(int(h) * 3600, tz) for h in hours.tolist()], np.int64)
    local = t + offsets[inverse]
    day = (local % 86400) / 86400.0
    if not week:
        return day
    weekday = (local // 86400 + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    return (weekday + day) / 7.0


def _offset(ts: int, tz: Optional[dt.tzinfo]) -> int:
    """Seconds east of UTC at ``ts`` (the gateway's local zone when ``tz`` is None)."""
    d = dt.datetime.fromtimestamp(ts, tz) if tz is not None else dt.datetime.fromtimestamp(ts).astimezone()
    off = d.utcoffset()
    return int(off.total_seconds()) if off is not None else 0
