"""Checks values read from YAML and collects issues that carry file, line, key path and fix."""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterable, List, NoReturn, Optional, Tuple, Type, Union, cast

from fedmq.shared.topicmap.errors import ConfigIssue, TopicMapError
from fedmq.shared.topicmap.yamlsrc import LineDict, LineList

_MISSING = object()
_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}


def _type_name(kinds: Tuple[Type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


class Reader:
    """Reads typed values out of LineDicts, recording every problem instead of stopping at the first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: List[ConfigIssue] = []

    def error(self, line: Optional[int], path: str, message: str, fix: str = "") -> None:
        """Record one issue."""
        self.issues.append(ConfigIssue(self.file, line, path, message, fix))

    def stop(self) -> NoReturn:
        """Raise ``TopicMapError`` with the issues so far (reading cannot go on)."""
        raise TopicMapError(self.issues)

    def raise_if_any(self) -> None:
        """Raise ``TopicMapError`` if any issue was recorded."""
        if self.issues:
            raise TopicMapError(self.issues)

    @staticmethod
    def line_of(mapping: Any, key: str) -> Optional[int]:
        """Line of ``key`` in ``mapping``, else the mapping's own line."""
        if isinstance(mapping, LineDict):
            return mapping.key_lines.get(key, mapping.line)
        return None

    @staticmethod
    def item_line(seq: Any, index: int) -> Optional[int]:
        """Line of item ``index`` of a YAML list."""
        if isinstance(seq, LineList) and index < len(seq.item_lines):
            return seq.item_lines[index]
        return None

    def mapping(self, value: Any, path: str, line: Optional[int], allowed: Iterable[str],
                required: Iterable[str] = ()) -> Optional[LineDict]:
        """Check that ``value`` is a mapping with only ``allowed`` keys and all ``required`` ones."""
        allowed = list(allowed)
        if not isinstance(value, dict):
            self.error(line, path, f"must be a mapping, not {_describe(value)}",
                       f"write it as 'key: value' lines indented under {path or 'the top level'}")
            return None
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
                self.error(self.line_of(value, key), join_path(path, key), "unknown key", hint)
        for key in required:
            if key not in value:
                self.error(getattr(value, "line", line), join_path(path, key), "missing required key",
                           f"add '{key}:' under {path or 'the top level'}")
        return cast(LineDict, value)  # a plain dict where the YAML came from code, not a file

    def value(self, mapping: Optional[dict], key: str, path: str, kinds: Union[Type, Tuple[Type, ...]],
              default: Any = _MISSING, *, minimum: Optional[float] = None, maximum: Optional[float] = None,
              choices: Optional[Iterable[Any]] = None, check: Optional[Callable[[Any], Optional[str]]] = None,
              fix: str = "") -> Any:
        """Read ``mapping[key]`` checking its type, range, choices and an optional ``check``.

        Returns ``default`` when the key is absent (or the value is wrong, after recording it).
        """
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        full = join_path(path, key)
        if mapping is None or key not in mapping:
            return None if default is _MISSING else default
        v = mapping[key]
        line = self.line_of(mapping, key)
        ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
        if not ok and float in kinds and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            self.error(line, full, f"must be {_type_name(kinds)}, not {_describe(v)}",
                       fix or f"write {full} as {_type_name(kinds)}")
            return None if default is _MISSING else default
        if isinstance(v, float) and not math.isfinite(v):
            self.error(line, full, "must be a finite number", fix or "use a finite number")
            return None if default is _MISSING else default
        if minimum is not None and v < minimum:
            self.error(line, full, f"must be at least {minimum}, not {v}", fix or f"use a value >= {minimum}")
        elif maximum is not None and v > maximum:
            self.error(line, full, f"must be at most {maximum}, not {v}", fix or f"use a value <= {maximum}")
        if choices is not None:
            choices = list(choices)
            if v not in choices:
                self.error(line, full, f"must be one of {', '.join(map(str, choices))}, not {v!r}",
                           fix or f"pick one of {', '.join(map(str, choices))}")
        if check is not None:
            problem = check(v)
            if problem:
                self.error(line, full, problem, fix)
        return v

    def string_list(self, mapping: Optional[dict], key: str, path: str,
                    check: Optional[Callable[[Any], Optional[str]]] = None, fix: str = "") -> List[Any]:
        """Read a list of scalars, checking each item with ``check``."""
        seq = self.value(mapping, key, path, list, [])
        out = []
        for i, item in enumerate(seq or []):
            problem = check(item) if check else None
            if problem:
                self.error(self.item_line(seq, i) or self.line_of(mapping, key), f"{join_path(path, key)}[{i}]",
                           f"{item!r} {problem}", fix)
            else:
                out.append(item)
        return out


def join_path(path: str, key: str) -> str:
    """Dotted key path of ``key`` inside ``path``."""
    return f"{path}.{key}" if path else key


def _describe(v: Any) -> str:
    if v is None:
        return "nothing (empty value)"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return f"{_TYPE_NAMES.get(type(v), type(v).__name__)} ({v!r})"


def load_file(file: str) -> Tuple[Any, "Reader"]:
    """Read and parse a YAML file, returning its data and a Reader for it."""
    from fedmq.shared.topicmap.yamlsrc import load_yaml

    try:
        with open(file, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise TopicMapError([ConfigIssue(file, None, "", f"cannot read: {exc.strerror}",
                                         "check the path and its permissions")]) from None
    return load_yaml(raw, file), Reader(file)

