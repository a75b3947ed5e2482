"""Protocol v1 topic layout. Every topic of a federation lives under ``fedmq/v1/<federation>``.

A group's topic prefix is the federation prefix followed by the group path, one level per group
(``fedmq/v1/smart-home/home1/kitchen``). Levels that start with ``_`` are protocol levels and are
reserved: group and node names may not start with ``_``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

ROOT = "fedmq/v1"
GroupPath = Tuple[str, ...]

FORBIDDEN_LEVEL_CHARS = ("+", "#", "/", "\x00")
MAX_LEVEL_BYTES = 128


def prefix_problem(value: object) -> Optional[str]:
    """Why ``value`` cannot be a broker's topic prefix ('' or levels each followed by '/'), or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value == "":
        return None
    if not value.endswith("/"):
        return "must end with '/'"
    for level in value[:-1].split("/"):
        problem = level_problem(level)
        if problem:
            return f"level {level!r} {problem}"
    return None


def level_problem(value: object) -> Optional[str]:
    """Why ``value`` cannot be one topic level (a group name, node id or federation id), or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value == "":
        return "must not be empty"
    for ch in FORBIDDEN_LEVEL_CHARS:
        if ch in value:
            shown = {"\x00": "NUL"}.get(ch, ch)
            return f"must not contain {shown!r} (MQTT wildcard or level separator)"
    if value.startswith(("_", "$")):
        return "must not start with '_' or '$' (reserved for protocol and broker topics)"
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    if len(encoded) > MAX_LEVEL_BYTES:
        return f"must be at most {MAX_LEVEL_BYTES} bytes"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        return "must not contain control characters"
    return None


class Topics:
    """Builds every topic name of one federation."""

    def __init__(self, federation: str, prefix: str = "") -> None:
        self.federation = federation
        self.base = f"{prefix}{ROOT}/{federation}"  # a broker's topic_prefix puts the federation under it

    def group(self, path: Sequence[str]) -> str:
        """Topic prefix of a group (the root group is the federation prefix)."""
        return "/".join((self.base, *path))

    def model(self) -> str:
        """Global model, retained, QoS 1 (published by the root)."""
        return f"{self.base}/_model"

    def group_model(self, path: Sequence[str]) -> str:
        """A group's own model between its edge rounds (HierFAVG), retained, QoS 1; the root's is ``model()``."""
        return f"{self.group(path)}/_model" if path else self.model()

    def model_file(self, sha256: str) -> str:
        """A model file (e.g. .tflite), retained, named by the SHA-256 of its bytes."""
        return f"{self.base}/_file/{sha256}"

    def enrol_request(self, token_id: str) -> str:
        """Where a device sends its enrolment request (JSON), with the token's own credentials."""
        return f"{self.base}/_enrol/request/{token_id}"

    def enrol_reply(self, token_id: str) -> str:
        """Where the coordinator answers it."""
        return f"{self.base}/_enrol/reply/{token_id}"

    def metrics(self) -> str:
        """Per-round metrics summary, retained, JSON (published by the root)."""
        return f"{self.base}/_metrics"

    def round_state(self) -> str:
        """The open round's progress (selected, answered, deadline), retained, JSON (published by the root)."""
        return f"{self.base}/_round"

    def history(self) -> str:
        """The key figures of every applied round (the last 1000), retained, JSON (published by the root)."""
        return f"{self.base}/_history"

    def status_filter(self, path: Sequence[str]) -> str:
        """Every node status of one group."""
        return self.leaves(path, "status")

    def leaves(self, path: Sequence[str], kind: str) -> str:
        """The filter for every ``<group>/_<kind>/<leaf>`` of one group (``update``, ``partial``, ``status``,
        ``progress``, ``secagg``): what ``parse_last(topic, kind)`` splits."""
        return f"{self.group(path)}/_{kind}/+"

    def files_filter(self) -> str:
        """Every model file."""
        return f"{self.base}/_file/#"

    def everything(self) -> str:
        """Every topic of the federation."""
        return f"{self.base}/#"

    def control(self, path: Sequence[str]) -> str:
        """Round control of a group, retained, JSON."""
        return f"{self.group(path)}/_control"

    def update(self, path: Sequence[str], node: str) -> str:
        """A node's update to its group aggregator, QoS 1."""
        return f"{self.group(path)}/_update/{node}"

    def partial(self, parent: Sequence[str], child: str) -> str:
        """A child group's partial aggregate to its parent, QoS 1."""
        return f"{self.group(parent)}/_partial/{child}"

    def progress(self, path: Sequence[str], worker: int) -> str:
        """Where worker ``worker`` of a group split over several workers says which nodes it has aggregated."""
        return f"{self.group(path)}/_progress/{worker}"

    def status(self, path: Sequence[str], node: str) -> str:
        """A node's status (online / offline), retained, with the last will."""
        return f"{self.group(path)}/_status/{node}"

    def secagg_in(self, path: Sequence[str], node: str) -> str:
        """A node's secure-aggregation messages to its group aggregator, QoS 1."""
        return f"{self.group(path)}/_secagg/{node}"

    def secagg_all(self, path: Sequence[str]) -> str:
        """The group aggregator's secure-aggregation messages to every node of the group, QoS 1."""
        return f"{self.group(path)}/_secagg/_all"

    def secagg_to(self, path: Sequence[str], node: str) -> str:
        """The group aggregator's secure-aggregation messages to one node, QoS 1."""
        return f"{self.group(path)}/_secagg/_to/{node}"

    def parse_group(self, topic: str, kind: str) -> Optional[GroupPath]:
        """The group path of ``<group>/_<kind>`` (``model``, ``control``); None if it does not match."""
        if topic == f"{self.base}/_{kind}":
            return ()
        if not topic.startswith(self.base + "/") or not topic.endswith(f"/_{kind}"):
            return None
        parts = topic[len(self.base) + 1 : -len(kind) - 2].split("/")
        return tuple(parts) if all(p and not p.startswith("_") for p in parts) else None

    def parse_last(self, topic: str, kind: str) -> Optional[Tuple[GroupPath, str]]:
        """Split ``<group>/_<kind>/<leaf>`` into (group path, leaf); None if it does not match."""
        if not topic.startswith(self.base + "/"):
            return None
        parts = topic[len(self.base) + 1 :].split("/")
        if len(parts) < 2 or parts[-2] != f"_{kind}":
            return None
        return tuple(parts[:-2]), parts[-1]
