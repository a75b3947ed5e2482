"""Guard rails against floods: a per-sender token bucket (the update-norm bound is ``codecs.norm``)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Optional


class RateLimiter:
    """Token bucket per sender: ``rate`` messages per second with bursts of ``burst``; remembers at most
    ``max_keys`` senders (the least recently seen are forgotten first), so memory stays bounded."""

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self.rate, self.burst, self.max_keys = rate, float(burst), max_keys
        self.buckets: "OrderedDict[str, tuple[float, float]]" = OrderedDict()

    def allow(self, key: str, now: Optional[float] = None) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self.buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return allowed
