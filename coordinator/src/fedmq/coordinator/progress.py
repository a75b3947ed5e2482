"""The root's retained view of where the federation stands, for monitors (``fedmq status``, ``fedmq
dashboard``): the open round's progress on ``_round`` and the key figures of every applied round on
``_history`` (a dashboard started late still draws the whole curve)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Set

from fedmq.coordinator.async_group import AsyncGroup
from fedmq.coordinator.group import GroupAggregator
from fedmq.shared.topicmap.model import GroupPath

if TYPE_CHECKING:
    from fedmq.coordinator.rounds import RoundDriver

MAX_REVOKED_SHOWN = 200  # the round state stays small however many devices were ever revoked


def round_state(driver: "RoundDriver", groups: Mapping[GroupPath, GroupAggregator]) -> Dict[str, Any]:
    """``{"v": 1, "state": waiting | running | done, "round", "rounds_total", ...}``: in a sync round the
    nodes selected and those whose update is in (wherever in this process it arrived), the start and the
    deadline; in async mode the changes buffered towards the next model version."""
    out: Dict[str, Any] = {"v": 1, "round": driver.state.rounds_done, "rounds_total": driver.tm.policy.rounds,
                           "model_version": driver.state.model_version, "timestamp": round(time.time(), 3)}
    revoked = driver.presence.revoked()
    if revoked:
        out["revoked"] = revoked[:MAX_REVOKED_SHOWN]
    root = groups[()]
    if driver.finished:
        return {**out, "state": "done"}
    if isinstance(root, AsyncGroup):
        if root.session is None:
            return {**out, "state": "waiting", "online": len(driver.presence.ready())}
        return {**out, "state": "running", "mode": "async", "buffered": len(root.buffer.nodes),
                "buffer_size": root.settings.buffer_size}
    r = root.current
    if r is None:
        return {**out, "state": "waiting", "online": len(driver.presence.ready()),
                "min_nodes": driver.tm.policy.min_nodes}
    answered: Set[str] = set(r.nodes)
    for agg in groups.values():
        c = agg.current
        if c is not None and (c.ctl.round, c.ctl.attempt) == (r.ctl.round, r.ctl.attempt):
            answered |= c.answered
    return {**out, "state": "running", "mode": "sync", "round": r.ctl.round, "attempt": r.ctl.attempt,
            "task": r.ctl.task, "selected": len(r.ctl.selected), "answered": len(answered),
            "started_at": round(driver.round_started_at, 3), "deadline_at": round(r.ctl.deadline_at, 3)}


def changed(previous: Optional[Dict[str, Any]], current: Dict[str, Any]) -> bool:
    """Whether a round state differs from the one last published (its timestamp aside)."""
    if previous is None:
        return True
    return {k: v for k, v in previous.items() if k != "timestamp"} != {k: v for k, v in current.items()
                                                                         if k != "timestamp"}
