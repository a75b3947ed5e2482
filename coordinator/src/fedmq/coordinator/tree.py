"""Which groups a coordinator or an edge process serves, and which group a node id belongs to."""

from __future__ import annotations

from typing import Dict, List, Optional

from fedmq.shared.topicmap import Group, TopicMap
from fedmq.shared.topicmap.model import GroupPath


def served_groups(tm: TopicMap, edge: Optional[GroupPath] = None) -> List[Group]:
    """Groups run by one process: the root process runs everything outside edge subtrees; an edge
    process runs its group and everything below it that is not another edge group."""
    top = tm.root if edge is None else tm.groups()[edge]
    out: List[Group] = []

    def visit(g: Group) -> None:
        out.append(g)
        for child in g.children:
            if not child.edge:
                visit(child)

    visit(top)
    return out


class Membership:
    """Resolves node ids to their group path (named or admitted by pattern), with a cache."""

    def __init__(self, tm: TopicMap) -> None:
        self.tm = tm
        self._cache: Dict[str, Optional[GroupPath]] = {}

    def group_path(self, node_id: str) -> Optional[GroupPath]:
        """The node's group path, or None for an id the topic map does not admit."""
        if node_id not in self._cache:
            if len(self._cache) > 100_000:
                self._cache.clear()
            g = self.tm.group_of(node_id)
            self._cache[node_id] = g.path if g else None
        return self._cache[node_id]

    def in_subtree(self, node_id: str, path: GroupPath) -> bool:
        """True if the node belongs to the group at ``path`` or below it."""
        p = self.group_path(node_id)
        return p is not None and p[: len(path)] == path
