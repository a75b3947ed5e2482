"""The gateway's bounded sample store: one row of signal values per sampling period, in SQLite (WAL).

Rows are kept by age and by count (retention), written in small transactions, and the file stays
readable after a SIGKILL or a power cut (SQLite's write-ahead log, ``synchronous=FULL``). Memory does
not grow with the history kept: rows live on disk and are read when a round's training set is built.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import List, Sequence, Tuple

import numpy as np

from fedmq.shared.data import DataError

COMMIT_S = 1.0  # pending rows reach the disk within this long
COMMIT_ROWS = 512


class SampleStore:
    """Rows ``(t, values)``: ``t`` is the period's start (Unix seconds), ``values`` one float per signal."""

    def __init__(self, path: str, signals: Sequence[str], period_s: float, *, max_age_s: float,
                 max_rows: int) -> None:
        self.path = path
        self.signals = list(signals)
        self.period_s = period_s
        self.max_age_s = max_age_s
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._pending: List[Tuple[int, bytes]] = []
        self._last_commit = time.monotonic()
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA cache_size=-256")  # 256 KiB: rows are read once per round, in order
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS rows (t INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            self._check_layout()
        except (OSError, sqlite3.Error) as exc:
            raise DataError(f"store {path}: {exc}; check that the directory is writable and the file is a "
                            "fedmq store (or remove it)") from None

    def _check_layout(self) -> None:
        layout = json.dumps({"signals": self.signals, "period_s": self.period_s})
        row = self.db.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('layout', ?)", (layout,))
        elif row[0] != layout:
            raise DataError(f"store {self.path} was written for other signals or another period ({row[0]}); "
                            "move it away (or set data.store.path to a new file) to start a new history")

    def append(self, t: int, values: np.ndarray) -> None:
        """Queue one period's row; it is committed within ``COMMIT_S`` (see ``flush``)."""
        with self._lock:
            self._pending.append((int(t), np.asarray(values, np.float64).tobytes()))
            due = len(self._pending) >= COMMIT_ROWS or time.monotonic() - self._last_commit >= COMMIT_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Commit queued rows and apply retention, in one transaction."""
        with self._lock:
            rows, self._pending = self._pending, []
            self._last_commit = time.monotonic()
            if not rows:
                return
            newest = rows[-1][0]
            self.db.execute("BEGIN")
            try:
                self.db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?)", rows)
                self.db.execute("DELETE FROM rows WHERE t < ?", (newest - self.max_age_s,))
                self.db.execute("DELETE FROM rows WHERE t <= (SELECT t FROM rows ORDER BY t DESC LIMIT 1 OFFSET ?)",
                                (self.max_rows,))
                self.db.execute("COMMIT")
            except sqlite3.Error:
                self.db.execute("ROLLBACK")
                raise

    def rows(self) -> Tuple[np.ndarray, np.ndarray]:
        """Every stored row, oldest first: times (n,) int64 and values (n, signals) float32."""
        return self._read("SELECT t, v FROM rows ORDER BY t", "SELECT COUNT(*) FROM rows")

    def tail(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """The newest ``n`` rows, oldest first (the window a prediction is made on)."""
        t, v = self._read(f"SELECT t, v FROM rows ORDER BY t DESC LIMIT {int(n)}",
                          f"SELECT MIN(COUNT(*), {int(n)}) FROM rows")
        return t[::-1].copy(), v[::-1].copy()

    def _read(self, select: str, count: str) -> Tuple[np.ndarray, np.ndarray]:
        self.flush()
        width = len(self.signals)
        with self._lock:  # row by row into arrays: no list of every row in memory on the way
            n = int(self.db.execute(count).fetchone()[0])
            t = np.empty(n, np.int64)
            v = np.empty((n, width), np.float32)  # sensor values; features are computed in float64
            for i, (ti, blob) in enumerate(self.db.execute(select)):
                if i >= n or len(blob) != 8 * width:
                    raise DataError(f"store {self.path}: row {ti} is not {width} values; remove the store")
                t[i] = ti
                v[i] = np.frombuffer(blob, np.float64)
        return t, v

    def count(self) -> int:
        """Rows stored (committed and queued)."""
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]) + len(self._pending)

    def close(self) -> None:
        """Commit what is queued and close the file."""
        self.flush()
        with self._lock:
            self.db.close()
