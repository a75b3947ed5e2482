"""The JSON messages of secure aggregation (protocol section 9). Every field is validated on decode;
anything else raises ``MessageError``.

Node to aggregator (``<group>/_secagg/<node>``): ``keys`` (two X25519 public keys), ``shares`` (one sealed
share pair per peer), ``unmask`` (the shares the aggregator may have). Aggregator to nodes:
``roster`` (``<group>/_secagg/_all``: who takes part, their public keys, the threshold), ``deliver``
(``<group>/_secagg/_to/<node>``: the sealed shares addressed to that node), ``survivors`` (``_all``: whose
masked inputs arrived).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from fedmq.shared.messages import MessageError, _dump, _int, _load
from fedmq.shared.secagg import shamir
from fedmq.shared.secagg.crypto import KEY_BYTES, b64, unb64
from fedmq.shared.topics import level_problem

TYPES = ("keys", "shares", "unmask", "roster", "deliver", "survivors")
MAX_SEALED = 512  # bytes of one sealed share pair


@dataclass
class SecAggMessage:
    """One secure-aggregation message; which fields are set depends on ``type``."""

    type: str
    round: int
    attempt: int
    model_version: int  # with round and attempt: the session (edge rounds share round and attempt)
    keys: Dict[str, Tuple[bytes, bytes]] = field(default_factory=dict)  # roster: node -> (c_pk, s_pk); keys: own
    sealed: Dict[str, bytes] = field(default_factory=dict)  # shares: to peer; deliver: from peer
    b_shares: Dict[str, int] = field(default_factory=dict)  # unmask: shares of survivors' self-mask seeds
    s_shares: Dict[str, int] = field(default_factory=dict)  # unmask: shares of dropped nodes' mask keys
    nodes: List[str] = field(default_factory=list)  # survivors
    threshold: int = 0  # roster

    @property
    def session(self) -> Tuple[int, int, int]:
        """(round, attempt, model version): which group session this message belongs to."""
        return self.round, self.attempt, self.model_version

    def encode(self) -> bytes:
        """JSON bytes."""
        d: Dict[str, Any] = {"type": self.type, "round": self.round, "attempt": self.attempt,
                             "model_version": self.model_version}
        if self.type in ("keys", "roster"):
            keys = {n: {"c_pk": b64(c), "s_pk": b64(s)} for n, (c, s) in self.keys.items()}
            d.update(keys[""] if self.type == "keys" else {"nodes": keys, "threshold": self.threshold})
        elif self.type in ("shares", "deliver"):
            d["shares"] = {n: b64(v) for n, v in self.sealed.items()}
        elif self.type == "unmask":
            d["b"] = {n: shamir.to_text(v) for n, v in self.b_shares.items()}
            d["s"] = {n: shamir.to_text(v) for n, v in self.s_shares.items()}
        else:
            d["nodes"] = self.nodes
        return _dump(d)

    @classmethod
    def decode(cls, payload: bytes, allowed: Tuple[str, ...]) -> "SecAggMessage":
        """Parse and validate a message of one of the ``allowed`` types."""
        obj = _load(payload)
        kind = obj.get("type")
        if kind not in allowed:
            raise MessageError(f"type must be one of {', '.join(allowed)}, not {kind!r}")
        msg = cls(type=kind, round=_int(obj, "round"), attempt=_int(obj, "attempt"),
                  model_version=_int(obj, "model_version"))
        try:
            if kind == "keys":
                msg.keys[""] = (unb64(obj.get("c_pk"), KEY_BYTES), unb64(obj.get("s_pk"), KEY_BYTES))
            elif kind == "roster":
                msg.threshold = _int(obj, "threshold", 2)
                msg.keys = {n: (unb64(k.get("c_pk"), KEY_BYTES), unb64(k.get("s_pk"), KEY_BYTES))
                            for n, k in _ids(obj.get("nodes")).items() if isinstance(k, dict) or _fail("keys")}
                if msg.threshold > len(msg.keys):
                    raise MessageError("threshold above the number of nodes")
            elif kind in ("shares", "deliver"):
                msg.sealed = {n: unb64(v, limit=MAX_SEALED) for n, v in _ids(obj.get("shares")).items()}
            elif kind == "unmask":
                msg.b_shares = {n: shamir.from_text(v) for n, v in _ids(obj.get("b")).items()}
                msg.s_shares = {n: shamir.from_text(v) for n, v in _ids(obj.get("s")).items()}
            else:
                nodes = obj.get("nodes")
                if not isinstance(nodes, list) or len(set(map(str, nodes))) != len(nodes):
                    raise MessageError("nodes must be a list of distinct node ids")
                msg.nodes = list(_ids({n: None for n in nodes if isinstance(n, str) or _fail("nodes")}))
        except ValueError as exc:
            raise MessageError(str(exc)) from None
        return msg


def _fail(what: str) -> bool:
    raise MessageError(f"malformed {what}")


def _ids(value: object) -> Dict[str, Any]:
    """An object keyed by node ids (each a valid topic level)."""
    if not isinstance(value, dict) or any(level_problem(k) for k in value):
        raise MessageError("expected an object keyed by node ids")
    return value


def share_plaintext(sender: str, receiver: str, b_share: int, s_share: int) -> bytes:
    """What a node seals for a peer: the peer's shares of the sender's two secrets."""
    return json.dumps(
        {"from": sender, "to": receiver, "b": shamir.to_text(b_share), "s": shamir.to_text(s_share)}
    ).encode()


def open_plaintext(data: bytes, sender: str, receiver: str) -> Tuple[int, int]:
    """(b share, s share) from an opened share plaintext addressed from ``sender`` to ``receiver``."""
    try:
        obj = json.loads(data.decode("utf-8"))
        if not isinstance(obj, dict) or obj.get("from") != sender or obj.get("to") != receiver:
            raise ValueError("share addressed to someone else")
        return shamir.from_text(obj.get("b")), shamir.from_text(obj.get("s"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed share: {exc}") from None
