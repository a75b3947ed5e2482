"""Which nodes are online, from their retained status messages and last wills."""

from __future__ import annotations

from typing import Dict, List

from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.tree import Membership
from fedmq.shared.messages import MessageError, Status
from fedmq.shared.topicmap.model import GroupPath


class Presence:
    """Online / offline state of every admitted node."""

    def __init__(self, membership: Membership, rejections: Rejections, max_nodes: int = 100_000) -> None:
        self.membership = membership
        self.rejections = rejections
        self.max_nodes = max_nodes
        self.state: Dict[str, str] = {}

    def on_status(self, path: GroupPath, node: str, payload: bytes, topic: str) -> "str | None":
        """Record a status message; returns the new state, or None if the message was rejected."""
        if self.membership.group_path(node) != path:
            self.rejections.reject("unknown node", topic, f"{node!r} is not admitted to group {'/'.join(path) or '(root)'}")
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
        self.state[node] = status.state
        return status.state

    def online(self) -> List[str]:
        """Ids of the nodes currently online."""
        return sorted(n for n, s in self.state.items() if s == "online")
