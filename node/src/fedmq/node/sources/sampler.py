"""Turns a stream of readings into one row per fixed sampling period.

Within a period a signal's readings combine by its ``aggregate`` (the last one, or their mean). A period with
no reading repeats the last value: a sensor's while it is at most ``max_age_s`` old (forward fill), a held
signal's (a state such as an input_select or a mode) until it changes. A reading of "no value" (NaN: Home
Assistant's ``unavailable``, JSON null) ends the value. A row is stored when every input signal (one a
feature reads) has a value; the others (a label) may be missing (NaN: an unlabelled row, still served and
kept for features). A row that lacks an input is dropped and counted, never stored with a hole in it.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, List, Optional, Sequence

import numpy as np

from fedmq.node.sources.signals import Signal


class Sampler:
    """Readings in, rows out (``on_row(period_start, values)``), driven by an event-time clock."""

    def __init__(self, signals: Sequence[Signal], period_s: float, max_age_s: float,
                 on_row: Callable[[int, np.ndarray], None], inputs: Optional[Sequence[bool]] = None) -> None:
        self.period_s = period_s
        self.max_age_s = max_age_s
        self.on_row = on_row
        n = len(signals)
        self.mean = [s.aggregate == "mean" for s in signals]
        self.hold = [s.hold for s in signals]
        self.inputs = list(inputs) if inputs is not None else [True] * n  # a row needs these
        self.sums = [0.0] * n
        self.counts = [0] * n
        self.period_last = [0.0] * n
        self.last_value = [math.nan] * n
        self.last_time = [-math.inf] * n
        self.period: Optional[int] = None  # index of the open period
        self.rows = 0
        self.dropped_rows = 0
        self.unlabelled_rows = 0  # stored with a non-input signal (the label) missing
        self.lock = threading.Lock()

    def add(self, i: int, value: float, t: float) -> None:
        """A reading of signal ``i`` at event time ``t`` (NaN: the signal has no value from now on)."""
        with self.lock:
            self._advance(t)
            self.sums[i] += value
            self.counts[i] += 1
            self.period_last[i] = value
            self.last_value[i] = value
            self.last_time[i] = t

    def advance(self, now: float) -> None:
        """Close every period that ended before ``now``."""
        with self.lock:
            self._advance(now)

    def silent(self, now: float) -> List[int]:
        """Input signals without a value at ``now``: a sensor silent for longer than ``max_age_s``, a held
        signal never heard or told "no value" (rows lack them)."""
        with self.lock:
            return [i for i, t in enumerate(self.last_time) if self.inputs[i] and not self._has_value(i, now)]

    def _has_value(self, i: int, end: float) -> bool:
        if math.isnan(self.last_value[i]):
            return False
        return self.hold[i] or end - self.last_time[i] <= self.max_age_s

    def _advance(self, now: float) -> None:
        k = int(now // self.period_s)
        if self.period is None:
            self.period = k
            return
        while self.period < k:
            self._close(self.period)
            self.period += 1
            ages = [t for i, t in enumerate(self.last_time) if self.inputs[i] and not self.hold[i]]
            if self.period < k and ages and self.period * self.period_s - max(ages) > self.max_age_s:
                self.period = k  # nothing can be filled any more: skip the empty stretch
                break

    def _close(self, k: int) -> None:
        end = (k + 1) * self.period_s
        values: List[float] = []
        for i, count in enumerate(self.counts):
            if count:
                values.append(self.sums[i] / count if self.mean[i] else self.period_last[i])
            elif self._has_value(i, end):
                values.append(self.last_value[i])
            else:
                values.append(math.nan)
            self.sums[i], self.counts[i] = 0.0, 0
        missing = [math.isnan(v) for v in values]
        if any(m and need for m, need in zip(missing, self.inputs)):
            self.dropped_rows += 1
            return
        self.rows += 1
        self.unlabelled_rows += any(missing)
        self.on_row(int(k * self.period_s), np.asarray(values))
