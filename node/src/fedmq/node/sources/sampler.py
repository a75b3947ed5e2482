"""Turns a stream of readings into one row per fixed sampling period.

Within a period a signal's readings combine by its ``aggregate`` (the last one, or their mean); a
period with no reading repeats the last value while it is at most ``max_age_s`` old (forward fill);
a row that still lacks a signal is dropped and counted, never stored with a hole in it.
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
                 on_row: Callable[[int, np.ndarray], None]) -> None:
        self.period_s = period_s
        self.max_age_s = max_age_s
        self.on_row = on_row
        n = len(signals)
        self.mean = [s.aggregate == "mean" for s in signals]
        self.sums = [0.0] * n
        self.counts = [0] * n
        self.period_last = [0.0] * n
        self.last_value = [math.nan] * n
        self.last_time = [-math.inf] * n
        self.period: Optional[int] = None  # index of the open period
        self.rows = 0
        self.dropped_rows = 0
        self.lock = threading.Lock()

    def add(self, i: int, value: float, t: float) -> None:
        """A reading of signal ``i`` at event time ``t``."""
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
        """Signals with no reading for longer than ``max_age_s`` at ``now`` (rows lack them)."""
        with self.lock:
            return [i for i, t in enumerate(self.last_time) if now - t > self.max_age_s]

    def _advance(self, now: float) -> None:
        k = int(now // self.period_s)
        if self.period is None:
            self.period = k
            return
        while self.period < k:
            self._close(self.period)
            self.period += 1
            newest = max(self.last_time)
            if self.period < k and self.period * self.period_s - newest > self.max_age_s:
                self.period = k  # nothing can be filled any more: skip the empty stretch
                break

    def _close(self, k: int) -> None:
        end = (k + 1) * self.period_s
        values: List[float] = []
        for i, count in enumerate(self.counts):
            if count:
                values.append(self.sums[i] / count if self.mean[i] else self.period_last[i])
            elif end - self.last_time[i] <= self.max_age_s:
                values.append(self.last_value[i])
            else:
                values.append(math.nan)
            self.sums[i], self.counts[i] = 0.0, 0
        if any(math.isnan(v) for v in values):
            self.dropped_rows += 1
            return
        self.rows += 1
        self.on_row(int(k * self.period_s), np.asarray(values))
