"""Protocol v1 JSON messages: round control, node status and round metrics.

Every message is a UTF-8 JSON object with ``"v": 1``. Decoders validate every field and raise
``MessageError`` with the reason; nothing else is trusted. See docs/protocol.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

MAX_JSON_BYTES = 1 << 20
MAX_PROBLEM_CHARS = 300


class MessageError(ValueError):
    """A JSON message that does not follow protocol v1."""


def _load(payload: bytes) -> Dict[str, Any]:
    if len(payload) > MAX_JSON_BYTES:
        raise MessageError(f"message is {len(payload)} bytes, over {MAX_JSON_BYTES}")
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MessageError(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError("must be a JSON object")
    if obj.get("v") != 1:
        raise MessageError(f"unsupported message version {obj.get('v')!r} (expected 1)")
    return obj


def _no_constant(name: str) -> None:
    raise MessageError(f"{name} is not allowed")


def _dump(obj: Dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, **obj}, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _int(obj: Dict[str, Any], key: str, minimum: int = 0) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise MessageError(f"{key} must be an integer >= {minimum}")
    return v


def _num(obj: Dict[str, Any], key: str, minimum: float = 0.0) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < minimum:
        raise MessageError(f"{key} must be a finite number >= {minimum}")
    return float(v)


def _str(obj: Dict[str, Any], key: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v or len(v) > 256:
        raise MessageError(f"{key} must be a non-empty string")
    return v


TASKS = ("train", "stats")


@dataclass
class TrainParams:
    """Local training hyperparameters sent with every round start."""

    local_epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float = 0.0  # FedProx: mu/2 |w - w_global|^2 added to the local loss
    dp_clip_norm: Optional[float] = None  # local DP: clip the change to this norm ...
    dp_noise_multiplier: float = 0.0  # ... and add N(0, (multiplier * clip)^2) to every entry
    partial_work: bool = False  # a node short of time may send fewer epochs' work (FedProx)


@dataclass
class Control:
    """Round control. ``type`` is ``start``, ``async``, ``close`` or ``done``.

    start: ``round``, ``attempt``, ``model_version``, ``deadline_at`` (Unix time, seconds),
    ``selected`` (node ids in this group's subtree) and ``train``; optionally ``model_group`` (the group
    whose model topic carries ``model_version``: HierFAVG edge rounds; absent means the global model) and
    ``secure`` (secure aggregation parameters), ``task``: ``stats`` asks for feature statistics
    instead of training (federated scaling), and ``bounds``: ``weight`` (the largest weight an update counts
    with) and ``norm`` (the L2 norm its change is clipped to), each present only when set; ``opened``, the
    id of the aggregator process that opened the round in the group (a node that answered a process that
    since restarted sends its update again: what the killed process had counted is gone).
    async: ``round`` (model versions applied), ``attempt`` (the session), ``model_version`` and ``train``:
    every node trains on the newest model it has, once per model version (FedBuff).
    close: ``round``, ``attempt``, ``outcome`` (``applied``, ``retry`` or ``failed``).
    done: ``round`` (the last round applied); the federation is finished.
    """

    type: str
    round: int
    attempt: int = 0
    model_version: int = 0
    deadline_at: float = 0.0
    selected: List[str] = field(default_factory=list)
    train: Optional[TrainParams] = None
    outcome: str = ""
    model_group: Optional[List[str]] = None
    secure: Optional[Dict[str, Any]] = None
    task: str = "train"  # start only: "train", or "stats" (send feature statistics, see fedmq.shared.scaling)
    bounds: Optional[Dict[str, float]] = None  # start and async: {"weight": cap, "norm": clip}, either may be absent
    opened: int = 0  # start only: which aggregator process opened the round in this group (0: not said)

    def encode(self) -> bytes:
        """JSON bytes of this message."""
        d = asdict(self)
        only = {"model_version": ("start", "async"), "train": ("start", "async"), "deadline_at": ("start",),
                "selected": ("start",), "opened": ("start",), "outcome": ("close",)}
        for k, types in only.items():
            if self.type not in types:
                d.pop(k)
        unset = {"task": "train", "opened": 0, "model_group": None, "secure": None, "bounds": None}
        for k, default in unset.items():
            if k in d and d[k] == default:
                d.pop(k)
        if d.get("train"):  # optional fields only when set: a 1.1 node reads the rest unchanged
            t = d["train"]
            for k, default in (("proximal_mu", 0.0), ("dp_clip_norm", None), ("dp_noise_multiplier", 0.0),
                               ("partial_work", False)):
                if t[k] == default:
                    t.pop(k)
        return _dump(d)

    @classmethod
    def decode(cls, payload: bytes) -> "Control":
        """Parse and validate a control message."""
        obj = _load(payload)
        kind = obj.get("type")
        if kind not in ("start", "async", "close", "done"):
            raise MessageError(f"type must be start, async, close or done, not {kind!r}")
        msg = cls(type=kind, round=_int(obj, "round"), attempt=_int(obj, "attempt") if "attempt" in obj else 0)
        if kind == "start":
            msg.deadline_at = _num(obj, "deadline_at")
            sel = obj.get("selected")
            if not isinstance(sel, list) or not all(isinstance(s, str) and s for s in sel):
                raise MessageError("selected must be a list of node ids")
            msg.selected = sel
            group = obj.get("model_group")
            if group is not None and (not isinstance(group, list) or not all(isinstance(g, str) and g for g in group)):
                raise MessageError("model_group must be a list of group names")
            msg.model_group = group
            secure = obj.get("secure")
            if secure is not None and not isinstance(secure, dict):
                raise MessageError("secure must be an object")
            msg.secure = secure
            task = obj.get("task", "train")
            if task not in TASKS:
                raise MessageError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
            msg.task = task
            msg.opened = _int(obj, "opened") if "opened" in obj else 0
        if kind in ("start", "async"):
            msg.bounds = _bounds(obj.get("bounds"))
            msg.model_version = _int(obj, "model_version")
            msg.train = _train(obj.get("train"))
        elif kind == "close":
            outcome = obj.get("outcome")
            if outcome not in ("applied", "retry", "failed"):
                raise MessageError("outcome must be applied, retry or failed")
            msg.outcome = outcome
        return msg


def _train(train: Any) -> TrainParams:
    """A start's ``train``: the round's training parameters (the optional ones absent in 1.1 messages)."""
    if not isinstance(train, dict):
        raise MessageError("train must be an object")

    def optional(key: str, default: Optional[float]) -> Optional[float]:
        return _num(train, key) if key in train else default

    clip = optional("dp_clip_norm", None)
    if clip == 0:
        raise MessageError("dp_clip_norm must be > 0")
    return TrainParams(
        local_epochs=_int(train, "local_epochs", 1),
        batch_size=_int(train, "batch_size", 1),
        learning_rate=_num(train, "learning_rate"),
        proximal_mu=optional("proximal_mu", 0.0) or 0.0,
        dp_clip_norm=clip,
        dp_noise_multiplier=optional("dp_noise_multiplier", 0.0) or 0.0,
        partial_work=train.get("partial_work", False) is True,
    )


def _bounds(value: Any) -> Optional[Dict[str, float]]:
    """A start's ``bounds``: absent, or an object of ``weight`` and/or ``norm``, each a finite number > 0."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"weight", "norm"}:
        raise MessageError("bounds must be an object with weight and/or norm")
    out = {k: _num(value, k) for k in value}
    if any(v <= 0 for v in out.values()):
        raise MessageError("bounds must be > 0")
    return out


@dataclass
class Status:
    """A node's presence: ``state`` is ``online`` or ``offline`` (the last will); ``source`` the kind of
    its data source (``live`` if it streams); ``problem`` why its data cannot take part now ('' when it can);
    ``trainer`` the trainer it uses (its configured choice until a model tells it which); ``last_seen`` when
    it published this (Unix seconds; it does so at least every minute while online), ``last_round`` the last
    round it trained, ``version`` and ``protocol`` its fedmq release and protocol revision; for a live source,
    ``data``: what its stream dropped (``dropped_rows``: periods without every input; ``dropped``: readings by
    reason) and ``unlabelled_rows`` (kept and served, not trained), counts since the node started."""

    node: str
    state: str
    samples: int = 0
    trainer: str = ""
    source: str = ""
    live: bool = False  # the source is a live stream (federated scaling turns on for such fleets)
    problem: str = ""
    last_seen: float = 0.0
    last_round: int = 0
    version: str = ""
    protocol: str = ""
    data: Dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """JSON bytes of this message (empty optional fields left out)."""
        return _dump({k: v for k, v in asdict(self).items()
                      if (v not in ("", 0, 0.0) and v is not False and v != {})
                      or k in ("node", "state", "trainer", "samples")})

    @classmethod
    def decode(cls, payload: bytes) -> "Status":
        """Parse and validate a status message."""
        obj = _load(payload)
        state = obj.get("state")
        if state not in ("online", "offline"):
            raise MessageError("state must be online or offline")
        text = {}
        for key, limit in (("trainer", 64), ("source", 64), ("problem", MAX_PROBLEM_CHARS), ("version", 32),
                           ("protocol", 16)):
            v = obj.get(key, "")
            if not isinstance(v, str) or len(v) > limit:
                raise MessageError(f"{key} must be a string of at most {limit} characters")
            text[key] = v
        live = obj.get("live", False)
        if not isinstance(live, bool):
            raise MessageError("live must be true or false")
        return cls(node=_str(obj, "node"), state=state, samples=_int(obj, "samples") if "samples" in obj else 0,
                   live=live, last_seen=_num(obj, "last_seen") if "last_seen" in obj else 0.0,
                   last_round=_int(obj, "last_round") if "last_round" in obj else 0, data=_data(obj.get("data")),
                   **text)


MAX_DROP_REASONS = 32


def _data(value: Any) -> Dict[str, Any]:
    """A status's ``data`` counters: whole numbers >= 0, and at most 32 drop reasons of at most 64 characters."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"dropped_rows", "unlabelled_rows", "dropped"}:
        raise MessageError("data must be an object of dropped_rows, unlabelled_rows and dropped")
    out: Dict[str, Any] = {k: _int(value, k) for k in ("dropped_rows", "unlabelled_rows") if k in value}
    dropped = value.get("dropped", {})
    if not isinstance(dropped, dict) or len(dropped) > MAX_DROP_REASONS or not all(
            isinstance(k, str) and 0 < len(k) <= 64 for k in dropped):
        raise MessageError(f"data.dropped must map at most {MAX_DROP_REASONS} reasons to counts")
    if dropped:
        out["dropped"] = {k: _int(dropped, k) for k in dropped}
    return out


def encode_metrics(summary: Dict[str, Any]) -> bytes:
    """JSON bytes of a round summary published on the metrics topic."""
    return _dump(summary)


def decode_metrics(payload: bytes) -> Dict[str, Any]:
    """Parse a round summary from the metrics topic."""
    obj = _load(payload)
    _int(obj, "round")
    return obj


HISTORY_KEYS = ("round", "timestamp", "model_version", "accuracy", "loss", "accuracy_source", "updates", "selected",
                "bytes_up", "bytes_down", "seconds", "epsilon", "staleness")


HISTORY_ROWS = 1000  # rounds kept on the history topic (about 150 bytes each)


def history_rows(history: List[Dict[str, Any]], limit: int = HISTORY_ROWS) -> List[Dict[str, Any]]:
    """The key figures of the last ``limit`` round summaries (``rejected``: their count)."""
    rows = []
    for s in history[-limit:]:
        row = {k: s[k] for k in HISTORY_KEYS if k in s}
        if isinstance(s.get("rejected"), dict):
            row["rejected"] = sum(s["rejected"].values())
        rows.append(row)
    return rows


def encode_history(rows: List[Dict[str, Any]]) -> bytes:
    """JSON bytes of the history topic: ``{"v": 1, "rounds": [row, ...]}``, oldest first."""
    return _dump({"rounds": rows})


def decode_history(payload: bytes) -> List[Dict[str, Any]]:
    """The rows of a history message (each with an integer ``round``)."""
    obj = _load(payload)
    rows = obj.get("rounds")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise MessageError("rounds must be a list of objects")
    for row in rows:
        _int(row, "round")
    return rows
