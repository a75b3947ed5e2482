"""Safe YAML loading that remembers the line of every key and item and refuses duplicate keys."""

from __future__ import annotations

from typing import Any, Dict, List

import yaml

from fedmq.shared.topicmap.errors import ConfigIssue, TopicMapError


class LineDict(dict):
    """A mapping from YAML that knows the line of each key (``key_lines``) and its own ``line``."""

    line: int = 0
    key_lines: Dict[str, int]


class LineList(list):
    """A sequence from YAML that knows the line of each item (``item_lines``) and its own ``line``."""

    line: int = 0
    item_lines: List[int]


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader (no Python objects, no code) that builds LineDict / LineList."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in out:
            raise _DuplicateKey(
                "while reading a mapping", node.start_mark,
                f"duplicate key {key!r} (first on line {out.key_lines[key]})", key_node.start_mark,
            )
        out.key_lines[key] = key_node.start_mark.line + 1
        out[key] = loader.construct_object(value_node, deep=True)
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(raw: bytes, file: str) -> Any:
    """Parse YAML bytes safely; raise ``TopicMapError`` naming the line on any syntax problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise TopicMapError([ConfigIssue(file, bad_line, "", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
                                         "save the file as UTF-8")]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # safe: _Loader derives from SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        fix = ("remove or rename one of the two keys" if isinstance(exc, _DuplicateKey)
               else "check indentation, colons and quoting on this line and the one before")
        raise TopicMapError([ConfigIssue(file, line, "", f"YAML: {exc.problem or exc}", fix)]) from None
    except yaml.YAMLError as exc:
        raise TopicMapError([ConfigIssue(file, None, "", f"YAML: {exc}", "fix the YAML syntax")]) from None
    except RecursionError:
        raise TopicMapError([ConfigIssue(file, None, "", "YAML: nested too deeply",
                                         "flatten the file: no fedmq configuration needs more than a few dozen "
                                         "levels")]) from None
