"""Least-privilege ACLs from a topic map (Mosquitto ``acl_file``).

* a node may publish only its own update and status topics, and read only the global model, the model
  files and its own group's control topic: no other node's updates, no model publishing;
* an edge aggregator reads the updates, partials and statuses of the groups it serves, writes their
  control topics, reads its parent's control topic and publishes only its own partial towards its parent;
* the coordinator reads the federation's topics and writes only what it publishes: the model, model files,
  metrics, enrolment replies, and the control and partial topics of the groups (never an update or a status).

A right on an envelope topic ``T`` (update, partial, model) extends to ``T/_chunk/+``, where a message over
the payload cap travels in chunks (model files are under ``_file/#`` already).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Set

from fedmq.shared.chunks import chunk_filter
from fedmq.shared.identities import COORDINATOR, OBSERVERS, edge_id
from fedmq.shared.topicmap import TopicMap
from fedmq.shared.topicmap.model import GroupPath
from fedmq.shared.topics import Topics

ENROL_PREFIX = "enrol-"


def _served(tm: TopicMap, top: GroupPath) -> List[GroupPath]:
    out = []
    stack = [tm.groups()[top]]
    while stack:
        g = stack.pop()
        out.append(g.path)
        stack.extend(c for c in g.children if not c.edge)
    return out


def node_rules(t: Topics, node: str, group: GroupPath) -> List[str]:
    """ACL lines of one node."""
    return [f"user {node}",
            f"topic write {t.update(group, node)}",
            f"topic write {t.status(group, node)}",
            f"topic read {t.model()}",
            f"topic read {t.files_filter()}",
            f"topic read {t.control(group)}",
            f"topic write {t.secagg_in(group, node)}",
            f"topic read {t.secagg_all(group)}",
            f"topic read {t.secagg_to(group, node)}",
            *(f"topic read {t.group_model(group[:depth])}" for depth in range(1, len(group) + 1))]


def render_acl(
    tm: TopicMap, nodes: Dict[str, GroupPath], revoked: Iterable[str] = (), tokens: Iterable[str] = ()
) -> str:
    """The acl_file for the coordinator, every edge aggregator, the given nodes (id -> group) and the open
    enrolment tokens (each may only send its own request and read its own reply). Brokers with different
    topic prefixes (bridged sites) share the file: the rules are written once per prefix."""
    prefixes = sorted({tm.broker.topic_prefix} | {g.broker.topic_prefix for g in tm.groups().values() if g.broker})
    lines = [f"# fedmq ACL for federation {tm.federation}: generated, do not edit (fedmq broker provision)", ""]
    for prefix in prefixes:
        lines += _rules(tm, Topics(tm.federation, prefix), nodes, set(revoked), list(tokens))
    return "\n".join(_with_chunks(lines))


def _rules(tm: TopicMap, t: Topics, nodes: Dict[str, GroupPath], revoked: Set[str], tokens: List[str]) -> List[str]:
    lines = [
        f"user {COORDINATOR}",
        f"topic read {t.everything()}",
        f"topic write {t.model()}",
        f"topic write {t.files_filter()}",
        f"topic write {t.metrics()}",
        f"topic write {t.round_state()}",
        f"topic write {t.history()}",
        f"topic write {t.enrol_reply('+')}",
    ]
    for path in tm.groups():
        lines += [f"topic write {t.control(path)}", f"topic write {t.leaves(path, 'partial')}"]
        lines += _aggregator_writes(t, path)
        lines += _clearing(t, path)
    # the observers (fedmq status, fedmq dashboard): statuses, round progress and summaries; they write nothing
    observing = [
        f"topic read {t.metrics()}",
        f"topic read {t.round_state()}",
        f"topic read {t.history()}",
        *(f"topic read {t.status_filter(path)}" for path in tm.groups()),
    ]
    for observer in OBSERVERS:
        lines += ["", f"user {observer}", *observing]
    lines += [""]
    for path, group in tm.groups().items():
        if not group.edge:
            continue
        rules = _edge_rules(tm, t, path)
        for worker in range(group.workers):  # each worker process is a user of its own, with the same rights
            if edge_id(path, worker) not in revoked:  # a revoked edge keeps no user (and so no right)
                lines += [f"user {edge_id(path, worker)}", *rules, ""]
    for node in sorted(nodes):
        if node not in revoked:
            lines += node_rules(t, node, nodes[node]) + [""]
    for token in tokens:
        lines += [
            f"user {ENROL_PREFIX}{token}",
            f"topic write {t.enrol_request(token)}",
            f"topic read {t.enrol_reply(token)}",
            "",
        ]
    return lines


def _edge_rules(tm: TopicMap, t: Topics, path: GroupPath) -> List[str]:
    """The rights of the edge aggregator of group ``path`` (each of its workers gets the same)."""
    group = tm.groups()[path]
    rules: List[str] = []
    for p in _served(tm, path):
        rules += [
            f"topic read {t.leaves(p, 'update')}",
            f"topic readwrite {t.leaves(p, 'partial')}",
            f"topic read {t.status_filter(p)}",
            f"topic readwrite {t.control(p)}",
            f"topic read {t.leaves(p, 'secagg')}",
            *_aggregator_writes(t, p),
            *_clearing(t, p),
        ]
        rules += [f"topic read {t.group_model(p[:depth])}" for depth in range(1, len(p))]
    rules += [
        f"topic read {t.control(path[:-1])}",
        f"topic write {t.partial(path[:-1], path[-1])}",
        f"topic read {t.model()}",
    ]
    if group.workers > 1:  # its workers tell each other which nodes they have aggregated
        rules += [f"topic readwrite {t.leaves(path, 'progress')}"]
    if group.broker is not None:  # a site: its bridge logs in as this edge, forwards statuses, fetches files
        rules += [f"topic write {t.status_filter(p)}" for p in tm.site_groups(path)]
        rules += [f"topic read {t.files_filter()}"]
    return rules


def _clearing(t: Topics, path: GroupPath) -> List[str]:
    """Write on the group's update and secure-aggregation topics (and their chunks): nothing may stay retained
    there, and an aggregator clears what a node leaves retained (an empty retained message), so the broker
    neither keeps it nor replays it. Messages it could forge there are refused by signatures where the
    federation signs, and it aggregates them anyway."""
    return [f"topic write {t.leaves(path, 'update')}", f"topic write {t.leaves(path, 'secagg')}",
            f"topic write {chunk_filter(t.leaves(path, 'secagg'))}"]


def _aggregator_writes(t: Topics, path: GroupPath) -> List[str]:
    """What a group's aggregator publishes besides partials and control: its edge-round model (HierFAVG)
    and its secure-aggregation messages to the group's nodes."""
    return (
        [
            f"topic write {t.group_model(path)}",
            f"topic write {t.secagg_all(path)}",
            f"topic write {t.secagg_to(path, '+')}",
        ]
        if path
        else []
    )


def _with_chunks(lines: List[str]) -> List[str]:
    """Each ``topic`` rule on an envelope topic, followed by the same rule on that topic's chunks."""
    out = []
    for line in lines:
        out.append(line)
        if line.startswith("topic ") and ("/_update/" in line or "/_partial/" in line or line.endswith("/_model")):
            out.append(chunk_filter(line))
    return out
