"""The ``fedmq`` command. Each installed distribution adds its subcommands through the
``fedmq.commands`` entry-point group: a gateway with only fedmq-shared and fedmq-node gets
``fedmq node ...`` and ``fedmq validate``, nothing more.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from fedmq.shared import PROTOCOL_REVISION, __version__
from fedmq.shared.extras import MissingExtra
from fedmq.shared.logs import add_log_format, setup_logging
from fedmq.shared.plugins import plugins
from fedmq.shared.topicmap import TopicMapError

EXIT_CONFIG = 2


def _commands() -> list:
    return sorted(plugins("fedmq.commands"), key=lambda ep: ep.name)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every installed subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fedmq", description="Federated learning for IoT fleets over MQTT.",
        epilog="Run 'fedmq COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"fedmq {__version__} (protocol {PROTOCOL_REVISION})")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    add_log_format(parser, default="text")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in _commands():
        try:
            register = ep.load()
        except ImportError as exc:  # a half-installed distribution must not take the others down
            print(f"fedmq: skipping command {ep.name!r}: {exc}", file=sys.stderr)
            continue
        register(sub)
    _verbose_anywhere(parser)
    return parser


def _verbose_anywhere(parser: argparse.ArgumentParser) -> None:
    """``-v`` after any command's name too (``fedmq node run -v NODE.yaml``), as ``--log-format`` is: every
    subcommand's parser counts it into ``verbose_after``, which adds to the top-level ``-v``."""
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                if "-v" not in child._option_string_actions:
                    child.add_argument("-v", "--verbose", action="count", dest="verbose_after",
                                       default=argparse.SUPPRESS, help="more log output (-vv for debug)")
                _verbose_anywhere(child)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fedmq`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else EXIT_CONFIG
    verbosity = args.verbose + getattr(args, "verbose_after", 0) + getattr(args, "default_verbosity", 0)
    setup_logging(verbosity, args.log_format)
    try:
        return int(args.func(args) or 0)
    except TopicMapError as exc:
        print(f"fedmq: configuration error\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MissingExtra as exc:
        print(f"fedmq: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("fedmq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. 'fedmq validate FED.yaml | head': the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
