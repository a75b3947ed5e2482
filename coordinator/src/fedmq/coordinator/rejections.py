"""Counting and logging of everything the coordinator refuses."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Dict


class Rejections:
    """Counts rejected messages by reason, in total and since the last ``take_round``."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.total: Counter = Counter()
        self.round: Counter = Counter()

    def reject(self, reason: str, topic: str, detail: str = "") -> None:
        """Log and count one rejection."""
        self.total[reason] += 1
        self.round[reason] += 1
        self.log.warning("rejected %s: %s%s", topic, reason, f" ({detail})" if detail else "")

    def take_round(self) -> Dict[str, int]:
        """Counts since the last call, then reset them."""
        out = dict(self.round)
        self.round.clear()
        return out
