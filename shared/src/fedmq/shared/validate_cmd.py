"""``fedmq validate FILE``: check a topic map and print its tree."""

from __future__ import annotations

import argparse
import sys
from typing import List

from fedmq.shared.topicmap import Group, TopicMap, TopicMapError, load_topic_map
from fedmq.shared.topicmap.loader import file_issues


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the ``validate`` subcommand."""
    p = sub.add_parser("validate", help="check a topic map and print its tree",
                       description="Validate a federation's YAML topic map. Errors name the file, line, "
                                   "key path and a fix, and exit with code 2. Given a node configuration, "
                                   "it checks it as 'fedmq node check' does (features, data, files).")
    p.add_argument("file", help="topic map (YAML), or a node configuration")
    p.add_argument("--state-dir", metavar="DIR",
                   help="as 'fedmq coordinator run --state-dir': a relative checkpoint.dir is checked under DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate and print; a node configuration is handed to ``fedmq node check`` (features, data, files)."""
    if _is_node_config(args.file):
        from fedmq.shared.cli import build_parser

        try:
            node_args = build_parser().parse_args(["node", "check", args.file])
        except SystemExit:
            print(f"{args.file}: a node configuration; 'fedmq node check' needs fedmq-node installed", file=sys.stderr)
            return 2
        print(f"{args.file}: a node configuration: checking it as 'fedmq node check {args.file}' does")
        return int(node_args.func(node_args) or 0)
    tm = load_topic_map(args.file, state_dir=args.state_dir)
    issues = file_issues(tm)
    if issues:
        raise TopicMapError(issues)
    print("\n".join(render_tree(tm)))
    return 0


def _is_node_config(file: str) -> bool:
    """True for a YAML mapping with ``node_id`` and no ``tree``: a node's configuration, not a topic map."""
    from fedmq.shared.topicmap.reader import load_file

    try:
        data, _ = load_file(file)
    except TopicMapError:
        return False
    return isinstance(data, dict) and "node_id" in data and "tree" not in data


def render_tree(tm: TopicMap) -> List[str]:
    """Human-readable summary of a valid topic map."""
    p = tm.policy
    quorum = f"{p.quorum} nodes" if isinstance(p.quorum, int) else f"{p.quorum:.0%} of selected"
    lines = [
        f"{tm.file}: OK",
        f"federation {tm.federation}  (topics under {tm.topics().base})",
        f"broker     {tm.broker.host}:{tm.broker.port}{'  TLS' if tm.broker.tls else ''}",
        f"model      {tm.model.kind}, {tm.model.features} features"
        + (f", classes {list(tm.model.classes)}" if tm.model.classes else "")
        + (f", hidden {list(tm.model.hidden)}" if tm.model.hidden else ""),
        f"rounds     {p.rounds} x (fraction {p.fraction}, min {p.min_nodes}, max {p.max_nodes or '-'}, "
        f"deadline {p.deadline_s}s, quorum {quorum}, on failure {p.on_quorum_failure})",
        f"training   {p.local_epochs} epoch(s), batch {p.batch_size}, learning rate {p.learning_rate}",
        f"updates    {_codec_line(tm)}; model down as {tm.compression.model}",
        f"scaling    {_scaling_line(tm)}",
        f"strategy   {_strategy_line(tm)}",
        "transport  "
        + (
            f"chunks over {tm.transport.max_payload_bytes} bytes (timeout {tm.transport.chunk_timeout_s:g}s)"
            if tm.transport.max_payload_bytes
            else "no payload cap (no chunking)"
        ),
        "tree",
    ]
    lines.extend(_group_lines(tm.root, ""))
    return lines


def _scaling_line(tm: TopicMap) -> str:
    mode, every = tm.scaling.mode, tm.scaling.every_rounds
    if mode == "none":
        return "none: nodes train on their features as they are"
    when = f"before round 1 and every {every} rounds" if every else "before round 1"
    return ("federated" if mode == "federated" else "auto: federated when a node streams") + f" ({when})"


def _strategy_line(tm: TopicMap) -> str:
    s = tm.strategy
    parts = [s.aggregator]
    if s.clip_norm is not None:
        parts.append(f"changes clipped to {s.clip_norm:g}")
    if s.proximal_mu:
        parts.append(f"FedProx mu {s.proximal_mu:g}")
    parts.append(f"server optimizer {s.server_optimizer} (lr {s.server_lr:g})")
    if s.params:
        parts.append(", ".join(f"{k} {v}" for k, v in s.params.items()))
    if s.privacy is not None:
        p = s.privacy
        parts.append(f"{p.mode} DP: clip {p.clip_norm:g}, noise multiplier {p.noise_multiplier:g}, delta {p.delta:g}")
    return "; ".join(parts)


def _codec_line(tm: TopicMap) -> str:
    c = tm.compression.update
    detail = {
        "int8": f", {'one scale per tensor' if not c.block else f'a scale per {c.block} values'}",
        "topk": f", {c.fraction:.2%} of the entries ({c.index} indices, {c.values} values)",
    }.get(c.name, "")
    return (
        f"{c.name}{detail}" + (", as deltas" if c.delta else "") + (" with error feedback" if c.error_feedback else "")
    )


def _group_lines(g: Group, indent: str) -> List[str]:
    label = g.name if g.path else f"{g.name} (root)"
    extra = []
    if g.edge:
        extra.append("edge process")
    if g.nodes:
        extra.append(f"nodes: {', '.join(g.nodes)}")
    if g.admit:
        extra.append(f"admits: {', '.join(g.admit)}")
    out = [f"{indent}{label}" + (f"  [{'; '.join(extra)}]" if extra else "")]
    for child in g.children:
        out.extend(_group_lines(child, indent + "  "))
    return out
