"""Counting and logging of everything the coordinator refuses."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Dict, List

# Every reason a coordinator or edge counts (docs/operations.md), so each has a series from the start; enrolment
# refusals are counted as "enrol: <reason>".
REASONS = (
    "malformed", "bad checksum", "NaN or Inf", "over size limit", "wrong kind", "wrong federation",
    "sender mismatch", "missing signature", "unknown signer", "bad signature", "replayed nonce",
    "wrong shape or dtype", "wrong codec", "bad chunk", "incomplete chunks", "bad sample count",
    "update norm too large", "no reference model", "bad update norms", "bad update rows", "secure sum out of bounds",
    "bad secure aggregation message", "malformed secure aggregation message", "rate limit", "unknown node",
    "unselected node", "duplicate", "stale round", "wrong model version", "too stale", "unknown model version",
    "unexpected partial", "bad node list", "values too large", "malformed status", "malformed control",
    "malformed progress", "malformed model", "too many nodes", "retained message", "internal error",
    "enrol: malformed",
)


class Rejections:
    """Counts rejected messages by reason, in total and since the last ``take_round``."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.total: Counter = Counter()
        self.round: Counter = Counter()
        self.listeners: List[Callable[[str, str], None]] = []  # told (reason, topic) of every rejection (metrics)

    LOG_EACH = 5  # per reason and round; after that only at 10, 100, 1000... so a flood cannot flood the log

    def reject(self, reason: str, topic: str, detail: str = "") -> None:
        """Count one rejection and log it (throttled per reason)."""
        self.total[reason] += 1
        self.round[reason] += 1
        for listener in self.listeners:
            listener(reason, topic)
        n = self.round[reason]
        if n <= self.LOG_EACH:
            self.log.warning("rejected %s: %s%s", topic, reason, f" ({detail})" if detail else "")
        elif n in (10, 100, 1000, 10_000, 100_000):
            self.log.warning("rejected %d messages for %s this round (latest on %s)", n, reason, topic)

    def take_round(self) -> Dict[str, int]:
        """Counts since the last call, then reset them."""
        out = dict(self.round)
        self.round.clear()
        return out
