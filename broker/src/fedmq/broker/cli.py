"""``fedmq broker``: render a federation's mosquitto.conf, or run Mosquitto with it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from fedmq.broker.config import BrokerConfig, render_config
from fedmq.broker.process import find_mosquitto
from fedmq.shared.topicmap import load_topic_map


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq broker render`` and ``fedmq broker run``."""
    p = sub.add_parser("broker", help="Mosquitto configuration for a federation",
                       description="Write or run the Mosquitto configuration of a federation.")
    bsub = p.add_subparsers(dest="broker_command", metavar="SUBCOMMAND")
    for name, helptext in (("render", "write mosquitto.conf for a topic map"),
                           ("run", "render the config and run Mosquitto in the foreground")):
        r = bsub.add_parser(name, help=helptext, description=helptext)
        r.add_argument("topic_map", help="federation topic map (YAML)")
        r.add_argument("--out", help="write the config here (default: stdout for render, "
                                     "./mosquitto-<federation>.conf for run)")
        r.add_argument("--port", type=int, help="listener port (default: the topic map's broker.port)")
        r.add_argument("--bind", default=None, help="listener address (default: the topic map's broker.host)")
        r.add_argument("--persistence-dir", help="directory for Mosquitto's persistence file (default: none)")
        r.add_argument("--log-file", help="Mosquitto log file (default: stderr)")
        r.set_defaults(func=_render if name == "render" else _run)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _config(args: argparse.Namespace) -> "tuple[str, str]":
    tm = load_topic_map(args.topic_map)
    cfg = BrokerConfig.for_topic_map(tm, port=args.port, bind=args.bind or tm.broker.host,
                                     persistence_dir=args.persistence_dir, log_file=args.log_file)
    return tm.federation, render_config(cfg)


def _render(args: argparse.Namespace) -> int:
    _, text = _config(args)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _run(args: argparse.Namespace) -> int:
    federation, text = _config(args)
    out = args.out or os.path.abspath(f"mosquitto-{federation}.conf")
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"running mosquitto with {out} (Ctrl-C stops it)", file=sys.stderr)
    return subprocess.call([find_mosquitto(), "-c", out])
