"""Log output of every fedmq command: text lines for people, or (``--log-format json``) one JSON object per
line for log shippers (journald, Loki, Elasticsearch), with the node, group and round as fields."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Any, Dict

ROUND = re.compile(r"\bround (\d+)\b")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "node"?, "group"?, "round"?, "exception"?}`` per record. The
    node and group come from the logger's name (``fedmq.node.<id>``, ``fedmq.group.<path>``), the round from
    the message (``round N``), so every existing log line carries them without being rewritten."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        message = record.getMessage()
        out: Dict[str, Any] = {"time": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "message": message}
        parts = record.name.split(".", 2)
        if len(parts) == 3 and parts[0] == "fedmq" and parts[1] in ("node", "group"):
            out[parts[1]] = "" if parts[2] == "root" else parts[2]
        for key in ("node", "group", "round", "federation"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        found = ROUND.search(message)
        if found and "round" not in out:
            out["round"] = int(found.group(1))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(verbosity: int, fmt: str = "text") -> None:
    """Log to stderr: WARNING and up by default, INFO with -v, DEBUG with -vv; as text or JSON lines."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def add_log_format(parser: argparse.ArgumentParser, default: str = argparse.SUPPRESS) -> None:
    """``--log-format``: on the top-level parser (``default`` text), and after a long-running command's name
    too (no default there, so that it does not override the top-level choice)."""
    parser.add_argument("--log-format", choices=("text", "json"), default=default,
                        help="json: one JSON object per log line, with the node, group and round as fields")


class Context(logging.Filter):
    """Adds fixed fields (``node``, ``group``, ``federation``) to every record of the logger it filters."""

    def __init__(self, **fields: str) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the fields on the record; never drops one."""
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True
