"""Which nodes are online, from their retained status messages and last wills, which of them have a
data problem (their status names it; each is logged once, when it appears and when it is solved), and
which are revoked (the federation signs and their key is gone from keys.json: whatever their retained
status says, they are never selected)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional

from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.tree import Membership
from fedmq.shared.messages import MessageError, Status
from fedmq.shared.topicmap.model import GroupPath

FLAP_WINDOW_S = 60
FLAP_CHANGES = 8  # statuses within the window that make a node "flapping" (a healthy one sends a few an hour)


class Presence:
    """Online / offline state of every admitted node."""

    def __init__(self, membership: Membership, rejections: Rejections, max_nodes: int = 100_000,
                 log: Optional[logging.Logger] = None, trusted: Optional[Callable[[str], bool]] = None) -> None:
        self.membership = membership
        self.trusted = trusted or (lambda node: True)  # False for a revoked node
        self.rejections = rejections
        self.max_nodes = max_nodes
        self.log = log or logging.getLogger("fedmq.presence")
        self.state: Dict[str, str] = {}
        self.problem: Dict[str, str] = {}  # node -> its data problem, while it has one
        self.live: Dict[str, bool] = {}  # node -> learns from a live stream
        self.samples: Dict[str, int] = {}  # node -> the sample count its latest status reports
        self.data: Dict[str, Dict[str, Any]] = {}  # node -> what its live stream dropped (its latest status)
        self.changes: Dict[str, List[float]] = {}  # node -> when it sent its latest statuses (bounded)
        self.flap_logged: Dict[str, float] = {}

    def on_status(self, path: GroupPath, node: str, payload: bytes, topic: str) -> "str | None":
        """Record a status message; returns the new state, or None if the message was rejected."""
        if self.membership.group_path(node) != path:
            self.rejections.reject(
                "unknown node", topic, f"{node!r} is not admitted to group {'/'.join(path) or '(root)'}"
            )
            return None
        try:
            status = Status.decode(payload)
        except MessageError as exc:
            self.rejections.reject("malformed status", topic, str(exc))
            return None
        if status.node != node:
            self.rejections.reject("sender mismatch", topic, f"status names {status.node!r}")
            return None
        if node not in self.state and len(self.state) >= self.max_nodes:
            self.rejections.reject("too many nodes", topic, f"limits.max_tracked_nodes is {self.max_nodes}")
            return None
        self._flap(node)
        self.state[node] = status.state
        if status.state == "online":
            self.live[node] = status.live
            self.samples[node] = status.samples
            self.data[node] = status.data
            self._set_problem(node, status.problem)
        return status.state

    def _flap(self, node: str) -> None:
        """Say once a minute per node when it keeps announcing itself (a status on every reconnection, a will
        on every lost connection): two processes with the same id take each other's connection over, or
        its link is unstable."""
        now = time.monotonic()
        times = [t for t in self.changes.get(node, []) if now - t < FLAP_WINDOW_S] + [now]
        self.changes[node] = times[-FLAP_CHANGES:]
        if len(times) >= FLAP_CHANGES and now - self.flap_logged.get(node, -FLAP_WINDOW_S) >= FLAP_WINDOW_S:
            self.flap_logged[node] = now
            self.log.warning(
                "node %s announced itself %d times within %ds: two processes running with the same "
                "node id take each other's connection over, or its link is unstable",
                node,
                len(times),
                FLAP_WINDOW_S,
            )

    def _set_problem(self, node: str, problem: str) -> None:
        before = self.problem.get(node, "")
        if problem == before:
            return
        if problem:
            self.problem[node] = problem
            self.log.warning("node %s has a data problem and takes no part until it is solved: %s", node, problem)
        else:
            del self.problem[node]
            self.log.info("node %s: data problem solved (was: %s)", node, before)

    def online(self) -> List[str]:
        """Ids of the nodes currently online (a revoked node is not, whatever its retained status says: it
        may no longer publish its last will)."""
        return sorted(n for n, s in self.state.items() if s == "online" and self.trusted(n))

    def revoked(self) -> List[str]:
        """Ids of the nodes heard of whose credentials are revoked."""
        return sorted(n for n in self.state if not self.trusted(n))

    def ready(self) -> List[str]:
        """Online nodes without a data problem: the ones a round may select."""
        return [n for n in self.online() if n not in self.problem]

    def reported_samples(self, nodes: List[str]) -> List[int]:
        """The sample counts these nodes report in their statuses (what the default weight cap is made of)."""
        return [self.samples.get(n, 0) for n in nodes]

    def problems(self) -> Dict[str, str]:
        """The data problems of the nodes online now, by node."""
        return {n: self.problem[n] for n in self.online() if n in self.problem}

    def any_live(self) -> bool:
        """True if a node online now learns from a live stream."""
        return any(self.live.get(n, False) for n in self.online())
