"""The root's driver in async mode (FedBuff): open one session once enough nodes are online, then apply
the root group's buffer each time it fills (one model version per ``buffer_size`` changes) until
``rounds.rounds`` versions are applied. Nodes are never selected and nothing waits for a slow node.
"""

from __future__ import annotations

import time
from typing import List, Optional

from fedmq.coordinator.group import GroupResult
from fedmq.coordinator.rounds import RoundDriver
from fedmq.shared.messages import Control


class AsyncDriver(RoundDriver):
    """Runs a federation in async mode from the root group (an ``AsyncGroup``)."""

    session: Optional[Control] = None  # the open async session, once enough nodes are online

    def tick(self, now: float) -> None:
        """Open the session once enough nodes are online (as the first synchronous round would start)."""
        if self.session is None:
            super().tick(now)

    def _start(self, online: List[str], task: str = "train") -> None:
        """Open the async session (statistics rounds are for sync federations: ``task`` is always train)."""
        self.session = Control(type="async", round=self.state.rounds_done, attempt=int(time.time() * 1000),
                               model_version=self.state.model_version, train=self._train_params(),
                               bounds=self._bounds(online, task).to_wire())
        self.round_started = self.first_start = time.monotonic()
        self.round_started_at = time.time()
        self.rejections.take_round()
        a = self.tm.strategy.asynchronous
        self.log.info("async session started with %d online nodes: a model version every %d changes, at most %d "
                      "versions stale", len(online), a.buffer_size, a.max_staleness)
        self.root.start(self.session)

    def _on_root_close(self, session: Control, result: GroupResult) -> None:
        if result.sums.weight <= 0:
            return
        change = result.sums.finish(None)  # the buffer holds changes
        summary = self._summary(result)
        summary["staleness"] = round(result.metrics.sums.get("staleness", 0.0) / max(1, len(result.nodes)), 3)
        self._apply(change, summary)
        self.round_started = time.monotonic()
