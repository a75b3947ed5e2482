"""``fedmq node``: run a node on a gateway, or check its configuration and data."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np

from fedmq.node.agent import NodeAgent
from fedmq.node.config import NodeConfig, load_node_config
from fedmq.node.serve import ha_rules
from fedmq.node.serve.config import describe_serving
from fedmq.shared.data import DataError, DataSource, open_source
from fedmq.shared.datacheck import checked_data
from fedmq.shared.extras import MissingExtra, require
from fedmq.shared.files import unreadable
from fedmq.shared.logs import add_log_format
from fedmq.shared.topicmap.model import BrokerSettings


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq node run`` and ``fedmq node check``."""
    p = sub.add_parser("node", help="run a federated node on this device",
                       description="Run a fedmq node: local data, local training, updates over MQTT.")
    nsub = p.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    run = nsub.add_parser("run", help="connect and take part in rounds until stopped",
                          description="Connect to the broker, announce this node, and train in every round that "
                                      "selects it. Reconnects with backoff; Ctrl-C or SIGTERM stops it cleanly. "
                                      "Several configurations run several nodes in this process (simulated fleets), "
                                      "each with its own MQTT connection.")
    run.add_argument("config", nargs="+", help="node configuration (YAML); several for several nodes")
    run.add_argument(
        "--exit-when-done", action="store_true", help="exit once the coordinator says the federation is done"
    )
    add_log_format(run)
    run.set_defaults(func=_run, default_verbosity=1)
    check = nsub.add_parser(
        "check",
        help="validate the configuration, its files and its data",
        description="Validate a node configuration, check that every file it names can be "
        "read, load its data (a stream source: the samples in its store now) and "
        "print its features; with --topic-map, check the data against the "
        "federation's model as the node does before every round (number of "
        "features, labels within the classes, NaN/Inf, too few samples). "
        "Exit 2 on any problem.",
    )
    check.add_argument("config", help="node configuration (YAML)")
    check.add_argument(
        "--topic-map",
        metavar="FED.yaml",
        help="the federation's topic map, to check the data against its model and the node's group",
    )
    check.set_defaults(func=_check)
    enrol = nsub.add_parser(
        "enrol",
        help="trade a one-time token for credentials and a node config",
        description="Log in with an enrolment token (from 'fedmq broker token'), ask the "
        "coordinator to admit this device under NODE_ID, and write its certificate, "
        "keys, password and a ready node.yaml into --out.",
    )
    enrol.add_argument("--federation", required=True)
    enrol.add_argument("--host", default="127.0.0.1", help="broker address")
    enrol.add_argument("--port", type=int, required=True, help="the broker's enrolment listener")
    enrol.add_argument("--main-port", type=int, help="the broker's main (mutual TLS) port for node.yaml")
    enrol.add_argument("--ca", required=True, help="the federation's CA certificate")
    enrol.add_argument("--token", required=True, help="<id>.<secret>")
    enrol.add_argument("--node-id", required=True, help="this device's id (the topic map's rules must admit it)")
    enrol.add_argument("--data", help="the device's data file for node.yaml (NPZ)")
    enrol.add_argument("--out", required=True, help="directory for the credentials and node.yaml")
    enrol.set_defaults(func=_enrol)
    bundle = nsub.add_parser(
        "bundle",
        help="an offline installer for a gateway: wheels, config, service",
        description="Write a .tar.gz with the wheels of fedmq-shared, fedmq-node and their "
        "dependencies for PLATFORM and Python VERSION, this node's config with its "
        "credentials (and data file), a systemd unit and install.sh, which installs "
        "into /opt/fedmq without network and starts the service. Needs PyPI here.",
    )
    bundle.add_argument("config", help="the node's configuration (YAML)")
    bundle.add_argument("--platform", required=True, choices=("x86_64", "aarch64", "armv7l"), help="the gateway's CPU")
    bundle.add_argument(
        "--python",
        default=f"{sys.version_info[0]}.{sys.version_info[1]}",
        help="the gateway's Python version, e.g. 3.11 (default: this one)",
    )
    bundle.add_argument("--out", required=True, help="the bundle file to write (.tar.gz)")
    bundle.add_argument(
        "--with",
        dest="extras",
        default=None,
        help="comma-separated extras: tflite, sklearn, secure (default: what the config's trainer "
        "and security section need)",
    )
    bundle.add_argument("--no-data", action="store_true", help="leave the data file out")
    bundle.set_defaults(func=_bundle)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _load(path: str) -> Tuple[NodeConfig, np.ndarray, np.ndarray, DataSource]:
    cfg = load_node_config(path)
    try:
        source = open_source(cfg.data)
        x, y = source.load()
    except DataError as exc:
        print(f"fedmq node: {cfg.file}: data: {exc}", file=sys.stderr)
        sys.exit(2)
    return cfg, x, y, source


def _check(args: argparse.Namespace) -> int:
    cfg, x, y, source = _load(args.config)
    problems = [f"{key}: {file}: {why}" for key, file, why in _file_problems(cfg, source)]
    spec = None
    if args.topic_map:
        from fedmq.shared.topicmap import load_topic_map

        tm = load_topic_map(args.topic_map)
        spec = tm.model
        if tm.federation != cfg.federation:
            problems.append(f"federation: the node says {cfg.federation!r}, {args.topic_map} says {tm.federation!r}")
        group = tm.group_of(cfg.node_id)
        if group is None or group.path != cfg.group:
            where = "no group" if group is None else f"group {'/'.join(group.path) or '(root)'}"
            problems.append(
                f"group: the node says {'/'.join(cfg.group) or '(root)'}, the topic map admits "
                f"{cfg.node_id!r} to {where}"
            )
    ha = cfg.serve.homeassistant if cfg.serve is not None else None
    if ha is not None:  # what Home Assistant would refuse (checked against the model's kind with --topic-map)
        problems += [f"serve.homeassistant: {p}" for p in ha_rules.problems(ha.device_class, ha.unit, spec)]
    if spec is not None:
        x, y, problem = checked_data(spec, x, y, cfg.min_samples, source.label_names)
    else:
        problem = f"too few samples: {len(x)}, at least {cfg.min_samples} needed" if len(x) < cfg.min_samples else None
    notes = []
    if problem and source.live and problem.startswith("too few samples"):
        notes.append(f"{problem}: the store fills as readings arrive; the node takes part once it holds enough")
    elif problem:
        problems.append(f"data: {problem}")
    print(
        f"{cfg.file}: node {cfg.node_id} in {cfg.federation}/{'/'.join(cfg.group) or '(root)'}, trainer "
        f"{cfg.trainer}, broker {cfg.broker.host}:{cfg.broker.port}"
    )
    print(f"  data ({cfg.data.kind}): {source.describe()}")
    print(
        f"  {len(x)} samples x {x.shape[1] if x.ndim == 2 else '?'} features"
        + (
            f"; model {spec.kind} with {spec.features} features"
            if spec is not None
            else " (add --topic-map FED.yaml to check them against the federation's model)"
        )
    )
    if cfg.serve is not None:
        print(f"  serve: {describe_serving(cfg.serve)}")
    for note in notes:
        print(f"  note: {note}")
    for p in problems:
        print(f"  problem: {p}", file=sys.stderr)
    if problems:
        return 2
    print(f"{cfg.file}: OK")
    return 0


def _file_problems(cfg: NodeConfig, source: DataSource) -> List[Tuple[str, str, str]]:
    """(key, file, why) for every file the configuration names that cannot be read, and every package its
    settings need that is not installed (with the extra that installs it)."""
    files: Dict[str, Optional[str]] = {f"data.{k}": v for k, v in source.files().items()}
    files.update({"security.keys": cfg.security.keys, "security.signing_key": cfg.security.signing_key})
    files.update(_broker_files("broker", cfg.broker))
    if cfg.serve is not None:
        files.update(_broker_files("serve.broker", cfg.serve.broker))
    return unreadable(files) + _missing_packages(cfg)


def _missing_packages(cfg: NodeConfig) -> List[Tuple[str, str, str]]:
    """Signatures (security.signing_key / keys) need the ``cryptography`` package: fedmq-node[secure]."""
    if not (cfg.security.signing_key or cfg.security.keys):
        return []
    try:
        require("cryptography.hazmat.primitives.asymmetric.ed25519", "fedmq-node", "secure", "signing updates")
    except MissingExtra as exc:
        return [("security", cfg.security.signing_key or cfg.security.keys or "", str(exc))]
    return []


def _broker_files(key: str, b: BrokerSettings) -> Dict[str, Optional[str]]:
    files = {f"{key}.password_file": b.password_file}
    if b.tls is not None:
        files.update(
            {
                f"{key}.tls.ca_file": b.tls.ca_file,
                f"{key}.tls.cert_file": b.tls.cert_file,
                f"{key}.tls.key_file": b.tls.key_file,
            }
        )
    return files


def _agent(path: str) -> NodeAgent:
    """The node of one configuration (its samples referenced by the agent alone: a live source replaces them);
    exit 2 naming every file it needs that cannot be read."""
    cfg, x, y, source = _load(path)
    missing = _file_problems(cfg, source)
    if missing:
        for key, file, why in missing:
            print(f"fedmq node: {cfg.file}: {key}: {file}: {why}", file=sys.stderr)
        sys.exit(2)
    return NodeAgent(cfg, x, y, source=source)


def _run(args: argparse.Namespace) -> int:
    agents = [_agent(path) for path in args.config]

    def stop_all(*_: object) -> None:
        for a in agents:
            a.stop()

    signal.signal(signal.SIGTERM, stop_all)
    threads = [
        threading.Thread(target=a.run, kwargs={"exit_when_done": args.exit_when_done}, name=a.cfg.node_id)
        for a in agents[1:]
    ]
    for t in threads:
        t.start()
    try:
        agents[0].run(exit_when_done=args.exit_when_done)
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        stop_all()
        for t in threads:
            t.join(10)
    return 0


def _enrol(args: argparse.Namespace) -> int:
    from fedmq.node.enrol import EnrolmentFailed, enrol_device

    try:
        path = enrol_device(
            federation=args.federation,
            host=args.host,
            port=args.port,
            ca_file=args.ca,
            token=args.token,
            node_id=args.node_id,
            out=args.out,
            data=args.data,
            main_port=args.main_port,
        )
    except EnrolmentFailed as exc:
        print(f"fedmq node enrol: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled {args.node_id}: run it with 'fedmq node run {path}'")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from fedmq.node.bundle import BundleError, build

    cfg = load_node_config(args.config)
    if args.extras is None:
        extras: List[str] = [t for t in ("tflite", "sklearn") if cfg.trainer == t]
        if cfg.security.signing_key or cfg.security.keys:
            extras.append("secure")
    else:
        extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    try:
        build(
            args.config,
            args.platform,
            args.python,
            args.out,
            extras,
            include_data=not args.no_data,
            log=lambda m: print(f"fedmq node bundle: {m}", flush=True),
        )
    except BundleError as exc:
        print(f"fedmq node bundle: {exc}", file=sys.stderr)
        return 2
    print(
        f"fedmq node bundle: wrote {args.out}; on the gateway: tar xzf {os.path.basename(args.out)} && "
        f"sudo ./fedmq-node-{cfg.node_id}/install.sh"
    )
    return 0
