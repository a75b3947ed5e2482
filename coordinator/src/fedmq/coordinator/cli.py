"""``fedmq coordinator run`` (the root) and ``fedmq coordinator edge`` (one edge subtree)."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from typing import TYPE_CHECKING, Any, Dict

from fedmq.shared.logs import add_log_format
from fedmq.shared.topicmap import ConfigIssue, TopicMapError, load_topic_map
from fedmq.shared.topicmap.loader import file_issues

if TYPE_CHECKING:  # the coordinator's modules load only when a coordinator command runs
    from fedmq.coordinator.service import CoordinatorService
    from fedmq.shared.topicmap import BrokerSettings


def register_coordinator(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq coordinator run`` and ``fedmq coordinator edge``."""
    p = sub.add_parser("coordinator", help="run the coordinator or an edge aggregator",
                       description="Run the federation's coordinator (root) or an edge aggregator for one group.")
    csub = p.add_subparsers(dest="coordinator_command", metavar="SUBCOMMAND")
    run = csub.add_parser("run", help="run the federation's rounds from the root",
                          description="Run all rounds of a federation: select online nodes, aggregate along the topic "
                                      "tree, checkpoint after every round. Resumes from the last checkpoint.")
    run.add_argument("topic_map", help="federation topic map (YAML)")
    run.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start from round 1")
    run.add_argument("--report", help="write the round summaries to this JSON file at the end")
    run.add_argument("--quiet", action="store_true", help="no per-round lines on stdout")
    run.add_argument("--state-dir", metavar="DIR",
                     help="where a relative checkpoint.dir goes (default: next to the topic map); the systemd unit "
                          "passes its StateDirectory=, /var/lib/fedmq")
    _metrics_flag(run)
    run.set_defaults(func=_run, default_verbosity=1)
    edge = csub.add_parser("edge", help="aggregate one group (an edge: true group) in this process",
                           description="Serve one group of the topic tree that is marked 'edge: true', and every group "
                                       "below it that is not an edge group itself: relay round starts to its nodes and "
                                       "send one partial aggregate per round to the parent group.")
    edge.add_argument("topic_map", help="federation topic map (YAML)")
    edge.add_argument("--group", required=True, help="slash-separated path of the group, e.g. site-a/building-2")
    edge.add_argument("--worker", type=int, default=0, metavar="INDEX",
                      help="which of the group's 'workers' this process is (0 .. workers-1); the broker shares the "
                           "group's updates between them (MQTT v5 shared subscription)")
    edge.add_argument("--signing-key", help="this edge's Ed25519 key (clients/edge__<group>.sign) when the topic map "
                                            "turns signatures on")
    edge.add_argument(
        "--share-key",
        metavar="FILE",
        help="a group split over workers: the group's secret (clients/edge__<group>.share) that names the "
        "workers' shared subscription, so that no other client can join it; required over TLS",
    )
    edge.add_argument(
        "--security-dir",
        metavar="DIR",
        help="the directory 'fedmq broker provision' wrote (or a copy of this edge's clients/edge__* files "
        "and ca.crt): takes this edge's certificate or password, signing key and share key from it",
    )
    edge.add_argument("--cert", help="this edge's client certificate (mutual TLS), instead of the topic map's")
    edge.add_argument("--key", help="the key of --cert")
    edge.add_argument("--username", help="this edge's MQTT username (passwords over TLS)")
    edge.add_argument("--password-file", help="file holding this edge's MQTT password")
    _metrics_flag(edge)
    edge.set_defaults(func=_edge, default_verbosity=1)
    build = csub.add_parser(
        "build-model",
        help="write the .tflite file of a tflite model kind",
        description="Build the training-capable .tflite file the coordinator distributes for a "
        "topic map whose model kind is tflite (no TensorFlow needed), and print "
        "its SHA-256. Check it with 'fedmq model check FILE'.",
    )
    build.add_argument("topic_map", help="federation topic map (YAML)")
    build.add_argument("--out", required=True, help="where to write the .tflite file")
    build.set_defaults(func=_build_model)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _metrics_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (overrides the topic map's "
        "metrics.address; port 0 picks a free one)",
    )
    add_log_format(p)


def _build_model(args: argparse.Namespace) -> int:
    from fedmq.coordinator.rounds import build_model_file
    from fedmq.shared.models import initial_weights

    tm = load_topic_map(args.topic_map)
    built = build_model_file(tm, initial_weights(tm.model))
    if built is None:
        raise TopicMapError(
            [
                ConfigIssue(
                    tm.file,
                    None,
                    "model.kind",
                    f"{tm.model.kind!r} has no model file",
                    "use kind: tflite to have the coordinator build a .tflite file",
                )
            ]
        )
    with open(args.out, "wb") as fh:
        fh.write(built[1])
    print(f"wrote {args.out} ({len(built[1]):,} bytes, sha256 {built[0]})")
    return 0


def _from_security_dir(
    args: argparse.Namespace, path: "tuple[str, ...]", broker: "BrokerSettings", signatures: bool, workers: int
) -> None:
    """Fill in the edge's credential flags that were not given from ``--security-dir``."""
    from fedmq.broker.provision import client_config, share_key_file
    from fedmq.shared.identities import edge_id

    mtls = broker.tls is not None and bool(broker.tls.cert_file)
    own = client_config(args.security_dir, edge_id(path, args.worker), auth="mtls" if mtls else "password")
    if mtls and not args.cert:
        args.cert, args.key = own["broker"]["tls"]["cert_file"], own["broker"]["tls"]["key_file"]
    if broker.username and not args.username:
        args.username, args.password_file = own["broker"]["username"], own["broker"]["password_file"]
    if signatures and not args.signing_key:
        args.signing_key = own["security"]["signing_key"]
    if workers > 1 and not args.share_key:
        args.share_key = share_key_file(args.security_dir, path)


def _edge_broker(broker: "BrokerSettings", args: argparse.Namespace) -> "BrokerSettings":
    """The topic map's broker settings with the edge's own identity, when given."""
    from dataclasses import replace

    from fedmq.shared.topicmap import TlsSettings

    if args.cert and broker.tls is not None:
        broker = replace(broker, tls=TlsSettings(broker.tls.ca_file, args.cert, args.key))
    if args.username:
        broker = replace(broker, username=args.username, password_file=args.password_file)
    return broker


def quality(s: Dict[str, Any], regressor: bool = False) -> str:
    """``accuracy 0.9012`` for a classifier; for a regressor ``r2 0.81`` (held-out) or ``rmse 0.4213`` (the
    square root of the nodes' mean squared error); ``-`` when the round has none."""
    acc, loss = s.get("accuracy"), s.get("loss")
    if regressor and acc is None and loss is not None:
        return f"rmse {math.sqrt(max(0.0, loss)):.4f}"
    name = "r2" if regressor else "accuracy"
    return f"{name} {'-' if acc is None else f'{acc:.4f}'}"


def format_round(s: Dict[str, Any], regressor: bool = False) -> str:
    """One human-readable line per round."""
    loss = s.get("loss")
    source = {"held_out": " (held-out)", "node_training_data": " (nodes' data)"}.get(s.get("accuracy_source", ""), "")
    total = f" of {s['rounds_total']}" if "rounds_total" in s else ""
    eta = s.get("eta_s")
    return (
        f"round {s['round']:>3}{total}  {quality(s, regressor)}{source}  loss "
        f"{'-' if loss is None else f'{loss:.4f}'}  updates {s['updates']:>3}"
        + (f"/{s['selected']:<3}" if "selected" in s else f" staleness {s.get('staleness', 0):.1f}")
        + f"  up {s['bytes_up']:>9,} B  down {s['bytes_down']:>9,} B  {s['seconds']:.2f} s"
        + (f"  rejected {s['rejected']}" if s.get("rejected") else "")
        + (f"  data problems {s['problems']}" if s.get("problems") else "")
        + (f"  ETA {_duration(eta)}" if eta else "")
    )


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m10s`` or ``42s``."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _serve(service: "CoordinatorService") -> int:
    from fedmq.coordinator.rounds import FederationFailed

    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    try:
        service.run()
    except FederationFailed as exc:
        print(f"fedmq coordinator: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        service.stop()
    return 0


def _run(args: argparse.Namespace) -> int:
    from fedmq.coordinator.checkpoint import CheckpointError
    from fedmq.coordinator.service import CoordinatorService
    from fedmq.shared.data import DataError

    tm = load_topic_map(args.topic_map, state_dir=args.state_dir)
    issues = file_issues(tm)
    if issues:
        raise TopicMapError(issues)
    rounds = []

    def on_round(summary: Dict[str, Any]) -> None:
        rounds.append(summary)
        if not args.quiet:
            print(format_round(summary, not tm.model.is_classifier), flush=True)

    try:
        service = CoordinatorService(tm, fresh=args.fresh, on_round=on_round, metrics_address=args.metrics)
    except (CheckpointError, DataError) as exc:
        print(f"fedmq coordinator: {exc}", file=sys.stderr)
        return 2
    code = _serve(service)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump({"rounds": rounds, "rejected_total": dict(service.rejections.total)}, fh, indent=1)
    return code


def _edge(args: argparse.Namespace) -> int:
    from fedmq.coordinator.service import CoordinatorService

    tm = load_topic_map(args.topic_map)
    path = tuple(args.group.strip("/").split("/"))
    group = tm.groups().get(path)
    if group is None or not group.edge:
        raise TopicMapError(
            [
                ConfigIssue(
                    tm.file,
                    group.line if group else None,
                    f"tree ... {args.group}",
                    "no such group marked 'edge: true'",
                    "mark the group 'edge: true' in the topic map, or pass its full path",
                )
            ]
        )
    if not 0 <= args.worker < group.workers:
        print(
            f"fedmq coordinator edge: --worker must be in 0..{group.workers - 1} (group {args.group} has "
            f"workers: {group.workers})",
            file=sys.stderr,
        )
        return 2
    if args.security_dir:
        _from_security_dir(args, path, tm.broker_for(path), tm.security.signatures, group.workers)
    tm.broker = _edge_broker(tm.broker_for(path), args)  # a site group's edge talks to its site broker
    if tm.security.signatures and not args.signing_key:
        print("fedmq coordinator edge: the topic map turns signatures on: pass --signing-key", file=sys.stderr)
        return 2
    share_key = ""
    if group.workers > 1 and args.share_key:
        try:
            with open(args.share_key, encoding="utf-8") as fh:
                share_key = fh.read().strip()
        except OSError as exc:
            print(f"fedmq coordinator edge: cannot read --share-key {args.share_key}: {exc.strerror}", file=sys.stderr)
            return 2
    if group.workers > 1 and tm.broker.tls is not None and not share_key:
        print(
            f"fedmq coordinator edge: group {args.group} is split over {group.workers} workers on a secured broker: "
            "pass --share-key (the file clients/edge__<group>.share that fedmq broker provision wrote), else any "
            "client could join the workers' shared subscription and swallow updates",
            file=sys.stderr,
        )
        return 2
    return _serve(
        CoordinatorService(
            tm,
            edge=path,
            signing_key=args.signing_key,
            worker=args.worker,
            share_key=share_key,
            metrics_address=args.metrics,
        )
    )
