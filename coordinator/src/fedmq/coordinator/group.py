"""One group's part of a round: relay the start to its nodes, fold their updates and its children's
partial aggregates into streaming sums, and close (all in, or its deadline) by sending one partial
aggregate to its parent, or, for the root, by handing the sums to the round driver.

The same class runs inside the coordinator process and inside ``fedmq coordinator edge``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

import numpy as np

from fedmq.coordinator.aggregate import Accumulator, MetricSums, UpdateStack, WeightedSum
from fedmq.coordinator.private_mean import PrivateMean
from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.secure_session import SecureSession
from fedmq.coordinator.strategy import bounds as update_bounds
from fedmq.coordinator.strategy.bounds import Bounds
from fedmq.coordinator.strategy.clipping import clip_update
from fedmq.coordinator.strategy.vectors import flatten, size, unflatten
from fedmq.coordinator.tree import Membership
from fedmq.shared import codecs
from fedmq.shared.envelope import Envelope, Kind, Rejected
from fedmq.shared.identities import COORDINATOR, edge_id
from fedmq.shared.messages import Control
from fedmq.shared.models import expected_shapes
from fedmq.shared.scaling import stats_shapes
from fedmq.shared.signing import Auth, open_envelope, seal
from fedmq.shared.topicmap import Group, TopicMap

Publish = Callable[[str, bytes, bool], None]
MAX_PROGRESS_BYTES = 1 << 16
REJECTED = "rejected:"  # partial metrics "rejected:<reason>": what the child's process refused, by reason
MAX_FORWARDED_REASONS = 32
# No finite update may make a sum (of up to millions of updates) or a squared norm overflow float64.
MAX_WEIGHTED_VALUE = 1e100


@dataclass
class GroupResult:
    """What a group hands upwards when it closes."""

    sums: Accumulator  # a WeightedSum, or at the root under DP a PrivateMean around one
    nodes: List[str]
    metrics: MetricSums
    bytes_up: float
    stack: Optional[UpdateStack] = None  # every update, when the strategy's rule is robust or in calibration
    norms: List[float] = field(default_factory=list)  # the nodes' change norms as sent (adaptive bound), in order


@dataclass
class _Round:
    ctl: Control
    close_at: float
    direct: Set[str]
    children: Set[Tuple[str, int]]  # (child group, worker) partials expected; one worker unless split
    sums: Accumulator = field(default_factory=WeightedSum)
    metrics: MetricSums = field(default_factory=MetricSums)
    nodes: List[str] = field(default_factory=list)
    answered: Set[str] = field(default_factory=set)  # by this worker, or, split, by any worker of the group
    reported: Set[Tuple[str, int]] = field(default_factory=set)
    bytes_up: float = 0.0
    stack: Optional[UpdateStack] = None
    secure: Optional[SecureSession] = None  # this group's secure aggregation of its direct nodes
    shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # of the model, or of statistics
    bounds: Bounds = field(default_factory=Bounds)  # the round's weight cap and norm bound (from the root)
    norms: List[float] = field(default_factory=list)  # change norms of the updates counted, parallel to nodes

    @property
    def stats(self) -> bool:
        """True in a statistics round (federated scaling): updates are feature means, summed plainly."""
        return self.ctl.task == "stats"


class GroupAggregator:
    """Aggregates one group of the topic tree for one round at a time."""

    def __init__(self, tm: TopicMap, group: Group, membership: Membership, publish: Publish,
                 rejections: Rejections, *, on_root_close: Optional[Callable[[Control, GroupResult], None]] = None,
                 auth: Optional[Auth] = None, worker: int = 0, log: Optional[logging.Logger] = None) -> None:
        self.tm = tm
        self.worker = worker  # which of the group's workers this is (groups with workers > 1)
        self.group = group
        self.membership = membership
        self.publish = publish
        self.rejections = rejections
        self.on_root_close = on_root_close
        self.observers: List[Callable[[Tuple[str, ...], Control, GroupResult], None]] = []  # every close (metrics)
        self.auth = auth
        self.topics = tm.topics()
        self.log = log or logging.getLogger("fedmq.group." + ("/".join(group.path) or "root"))
        self.shapes = expected_shapes(tm.model)
        self.current: Optional[_Round] = None
        self.last_key: Optional[tuple] = None
        self.is_root = not group.path
        # this process, in the starts it relays: a node resends its update when another process relays the round
        # (the one it answered was restarted). Not for a group split over workers, which all relay the start.
        self.opened = (secrets.randbits(48) or 1) if group.workers == 1 else 0
        self.reference: Optional[Dict[str, np.ndarray]] = None  # the global model, for the update-norm bound
        self.model_version = -1
        # messages for a round not started here yet (bounded: a flood of them cannot grow memory)
        self.early: Deque[Tuple[Kind, str, bytes, str]] = deque(maxlen=max(64, 4 * len(group.nodes) + 16))
        self.waiting: Deque[Tuple[str, bytes, str]] = deque(maxlen=self.early.maxlen)  # updates awaiting the model
        self.counted: Set[bytes] = set()  # digests of the updates counted this round: a copy is not a rejection
        # Partial aggregates are raw float64 sums, of changes when the federation's updates are deltas.
        self._partial_codec = codecs.Codec(delta=tm.compression.update.delta)

    def attach(self, on_root_close: Callable[[Control, GroupResult], None]) -> None:
        """Where the root group hands each closed round: the round driver, once."""
        if not self.is_root or self.on_root_close is not None:
            raise ValueError(f"group {self.label} cannot take a round driver")
        self.on_root_close = on_root_close

    @property
    def label(self) -> str:
        """Group path for log lines."""
        return "/".join(self.group.path) or "(root)"

    def set_model(self, version: int, tensors: Dict[str, np.ndarray]) -> None:
        """The newest global model (float64 tensors): what nodes train from, the reference for norm bounds.
        Updates held until it came are taken now."""
        self.reference = tensors
        self.model_version = version
        waiting, self.waiting = list(self.waiting), deque(maxlen=self.waiting.maxlen)
        for node, payload, topic in waiting:
            self.on_update(node, payload, topic)

    # --- round lifecycle -------------------------------------------------------------------------

    def start(self, parent: Control) -> None:
        """Begin a round from the parent's start (or the root driver's); publish our own start."""
        key = (parent.round, parent.attempt, parent.model_version, tuple(parent.model_group or ()))
        if key == self.last_key or parent.type != "start":
            return  # the same start again (retained copy, or our own relay), or not a round's start
        if self.current is not None:
            self.log.info(
                "round %d attempt %d superseded before closing", self.current.ctl.round, self.current.ctl.attempt
            )
        margin = 0.0 if self.is_root else self.tm.policy.hop_margin_s
        close_at = parent.deadline_at - margin
        if close_at <= time.time():
            return  # too late to take part (e.g. a stale retained start)
        self.last_key = key
        self.counted = set()
        mine = [n for n in parent.selected if self.membership.in_subtree(n, self.group.path)]
        direct = {n for n in mine if self.membership.group_path(n) == self.group.path}
        children = {
            (c.name, w)
            for c in self.group.children
            if any(self.membership.in_subtree(n, c.path) for n in mine)
            for w in range(c.workers)
        }
        ctl = Control(
            type="start",
            round=parent.round,
            attempt=parent.attempt,
            model_version=parent.model_version,
            deadline_at=close_at,
            selected=mine,
            train=parent.train,
            model_group=parent.model_group,
            secure=parent.secure,
            task=parent.task,
            bounds=parent.bounds,
            opened=self.opened,
        )
        stats = ctl.task == "stats"
        bounds = Bounds.from_wire(ctl.bounds)
        calibrating = update_bounds.calibrating(self.tm.strategy, bounds, stats)
        shapes = stats_shapes(self.tm.model.features) if stats else self.shapes
        secure = None
        if ctl.secure is not None and direct and self.tm.strategy.secure is not None:
            secure = SecureSession(
                self.tm.strategy.secure,
                self.topics,
                self.group.path,
                (ctl.round, ctl.attempt, ctl.model_version),
                direct,
                size(shapes),
                close_at,
                self.publish,
                self.rejections,
                self.log,
                self.tm.federation,
            )
        self.current = _Round(
            ctl=ctl,
            close_at=close_at,
            direct=direct,
            children=children,
            shapes=shapes,
            sums=self._accumulator(ctl),
            stack=UpdateStack(shapes) if (self.tm.strategy.robust or calibrating) and not stats else None,
            secure=secure,
            bounds=bounds,
        )
        self.publish(self.topics.control(self.group.path), ctl.encode(), True)
        self.log.debug("round %d: %d direct nodes, children %s", ctl.round, len(direct), sorted(children))
        early, self.early = list(self.early), deque(maxlen=self.early.maxlen)
        for kind, sender, payload, topic in early:  # what arrived before this start, now that it is known
            (self.on_update if kind == Kind.UPDATE else self.on_partial)(sender, payload, topic)
        self._maybe_close()

    def _accumulator(self, ctl: Control) -> Accumulator:
        """What this group sums a round into: a weighted sum; at the root of a training round under
        differential privacy, the private mean around one."""
        privacy = self.tm.strategy.privacy
        if self.is_root and privacy is not None and ctl.task == "train":
            return PrivateMean(privacy, len(ctl.selected), self.shapes)
        return WeightedSum()

    def relay_close(self, parent: Control) -> None:
        """The parent closed a round: tell our nodes, and drop it if it is still open here. A close of any
        other round than the one we started last is an old echo (a copy through the broker arriving after
        the next start): relaying it would overwrite the retained start that reconnecting nodes need."""
        if parent.type == "close" and self.last_key is not None and (parent.round, parent.attempt) != self.last_key[:2]:
            return
        if self.current is not None and (self.current.ctl.round, self.current.ctl.attempt) == (
            parent.round,
            parent.attempt,
        ):
            self.log.warning("round %d closed by the parent before this group closed", parent.round)
            self.current = None
        self.publish(self.topics.control(self.group.path), parent.encode(), True)

    def tick(self, now: float) -> None:
        """Move secure aggregation on; close the round once its deadline has passed."""
        r = self.current
        if r is not None and r.secure is not None:
            r.secure.tick(now)
            self._secure_progress()
        if self.current is not None and now >= self.current.close_at:
            self._close("deadline")

    def next_deadline(self) -> Optional[float]:
        """When ``tick`` will next have work, if a round is open."""
        r = self.current
        if r is None:
            return None
        secure = r.secure.next_deadline() if r.secure is not None else None
        return min(r.close_at, secure) if secure is not None else r.close_at

    def node_offline(self, node: str) -> None:
        """A selected node went offline (its last will). The round still waits for it until the deadline:
        it may reconnect and answer (its persistent session keeps the round start for it)."""
        r = self.current
        if r is not None and node in r.direct and node not in r.answered:
            self.log.info("round %d: node %s went offline before answering", r.ctl.round, node)

    def revoked(self, node: str) -> None:
        """A node's credentials were revoked: an open round stops waiting for its update, which would be
        refused anyway (a secure session treats it as a dropout instead)."""
        r = self.current
        if r is not None and r.secure is None and node in r.direct and node not in r.answered:
            r.direct.discard(node)
            self.log.warning("round %d: node %s is revoked; not waiting for its update", r.ctl.round, node)
            self._maybe_close()

    # --- incoming ----------------------------------------------------------------------------------

    def _signer(self, kind: Kind, sender: str, env: Envelope) -> str:
        """Who must have signed: the node for an update; for a partial, the child's edge aggregator (the
        worker the partial names, when the child is split over several), or the coordinator when the child
        group runs inside the coordinator."""
        if kind == Kind.UPDATE:
            return sender
        child = next((c for c in self.group.children if c.name == sender), None)
        if child is None or not child.edge:
            return COORDINATOR
        worker = env.meta.get("worker", 0)
        valid = isinstance(worker, int) and not isinstance(worker, bool) and 0 <= worker < child.workers
        return edge_id(child.path, worker if valid else 0)

    def _decode(self, payload: bytes, topic: str, kind: Kind, sender: str) -> Optional[Envelope]:
        """The envelope if it is well-formed, from ``sender``, and for the open round; else None (rejected, or
        held until its round starts). Its nonce is remembered when it counts (``_first_time``)."""
        env = self._open(payload, topic, kind, sender)
        if env is None:
            return None
        r = self.current
        ahead = r is None or (env.round, env.attempt) > (r.ctl.round, r.ctl.attempt)
        known = self.last_key[:2] if self.last_key is not None else None
        if ahead and (known is None or known < (env.round, env.attempt) and env.round <= known[0] + 1):
            # for a round we have not heard of yet: a restarted aggregator's persistent session hands it the
            # updates it kept before the retained start; they are checked in full once that start arrives
            self.early.append((kind, sender, payload, topic))
            return None
        if r is None or (env.round, env.attempt) != (r.ctl.round, r.ctl.attempt):
            self.rejections.reject(
                "stale round",
                topic,
                f"round {env.round} attempt {env.attempt}; "
                + (f"open is {r.ctl.round} attempt {r.ctl.attempt}" if r else "no round is open"),
            )
            return None
        if env.model_version != r.ctl.model_version:
            self.rejections.reject("wrong model version", topic, f"{env.model_version}, expected {r.ctl.model_version}")
            return None
        return env

    def _first_time(self, payload: bytes, topic: str, sender: str) -> bool:
        """Where the federation signs, remember a message's nonce as it is counted; False (rejected) for a
        replay."""
        if self.auth is None:
            return True
        try:
            self.auth.keyring.remember(payload, sender)
            return True
        except Rejected as exc:
            self.rejections.reject(exc.reason, topic, str(exc))
            return False

    def _open(self, payload: bytes, topic: str, kind: Kind, sender: str) -> Optional[Envelope]:
        """The envelope if it decodes, is of ``kind`` and this federation, and comes (signed) from ``sender``."""
        try:
            return open_envelope(
                payload,
                federation=self.tm.federation,
                kind=kind,
                sender=sender,
                auth=self.auth,
                max_bytes=self.tm.limits.max_message_bytes,
                signers=lambda env: (self._signer(kind, sender, env),),
                fresh=False,  # replays are refused once the round is known (_decode)
            )
        except Rejected as exc:
            self.rejections.reject(exc.reason, topic, str(exc))
            return None

    def _refused(self, topic: str, checks: List[Tuple[bool, str, str]]) -> bool:
        """Reject with the first failing check's reason; True if one failed."""
        for failed, reason, detail in checks:
            if failed:
                self.rejections.reject(reason, topic, detail)
                return True
        return False

    def _tensors(
        self, env: Envelope, codec: codecs.Codec, shapes: Dict[str, Tuple[int, ...]]
    ) -> Tuple[Optional[Dict[str, codecs.Decoded]], str, str]:
        """The tensors an envelope carries (of ``shapes``), decoded; or None, the rejection reason and its detail."""
        if (env.codec, env.codec_params.get("delta", False)) != (codec.name, codec.delta):
            return (
                None,
                "wrong codec",
                (
                    f"codec {env.codec} (delta {env.codec_params.get('delta', False)}); this "
                    f"federation uses {codec.name} (delta {codec.delta})"
                ),
            )
        try:
            return codecs.decode(env.codec, env.codec_params, env.tensors, shapes), "", ""
        except codecs.CodecError as exc:
            return None, "wrong shape or dtype", str(exc)

    def on_secagg(self, node: str, payload: bytes, topic: str) -> None:
        """A node's secure-aggregation message (keys, shares, unmasking shares)."""
        r = self.current
        if self._refused(
            topic,
            [
                (
                    self.membership.group_path(node) != self.group.path,
                    "unknown node",
                    f"{node!r} is not a member of group {self.label}",
                ),
                (r is None or r.secure is None, "stale round", "no secure aggregation is open in this group"),
            ],
        ):
            return
        assert r is not None and r.secure is not None
        r.secure.on_message(node, payload, topic)
        self._secure_progress()

    def _on_masked(self, r: _Round, node: str, env: Envelope, payload: bytes, topic: str) -> None:
        """A masked update: only summed in the field; nothing of it is readable on its own."""
        assert r.secure is not None
        masked = env.tensors.get("@masked")
        if self._refused(
            topic,
            [
                (node not in r.direct, "unselected node", f"{node} was not selected for round {r.ctl.round}"),
                (
                    set(env.tensors) != {"@masked"} or masked is None,
                    "wrong codec",
                    "secure aggregation updates carry exactly one tensor, @masked",
                ),
            ],
        ) or not self._first_time(payload, topic, node):
            return
        assert masked is not None
        problem = r.secure.on_masked(node, masked)
        if problem:
            self.rejections.reject("bad secure aggregation message", topic, problem)
            return
        r.metrics.merge(
            {
                "bytes_down": env.metrics.get("bytes_in", 0.0),
                "bytes_update": float(len(payload)),
                "bytes_update_tensors": float(masked.nbytes),
            },
            {},
        )
        r.bytes_up += len(payload)
        self._secure_progress()

    def _secure_progress(self) -> None:
        """Once the group's secure sum is unmasked (or has failed), count it and its nodes in."""
        r = self.current
        if r is None or r.secure is None or not r.secure.done or r.answered == r.direct:
            return
        if r.secure.result is not None:
            vec, nodes = r.secure.result
            problem = self._secure_sum_problem(r, vec, len(nodes))
            if problem:
                self.rejections.reject("secure sum out of bounds", self.topics.update(self.group.path, "+"), problem)
            else:
                r.sums.merge(unflatten(vec[:-1], r.shapes), float(vec[-1]))
                r.nodes.extend(nodes)
            r.metrics.merge({"secagg_dropped": float(len(r.direct) - len(nodes))}, {})
        r.answered = set(r.direct)  # nothing more will come from them this round
        self._maybe_close()

    def _secure_sum_problem(self, r: _Round, vec: np.ndarray, count: int) -> str:
        """Why an unmasked secure sum of ``count`` nodes cannot come from nodes that kept to the round's
        bounds ('' if it can): a total weight over ``count x`` the cap (1 each under DP), or a summed change
        longer than the total weight times the clip norm (plus the field's rounding). One node that breaks
        them costs its group the round's sum; what one can do within them is in docs/security.md."""
        assert r.ctl.secure is not None
        weight = float(vec[-1])
        cap = 1.0 if r.ctl.secure.get("equal_weights") else r.bounds.weight
        slack = 1e-6 + count * 2.0 ** -int(r.ctl.secure.get("frac_bits", 20))
        if cap is not None and weight > count * cap * (1 + 1e-9) + slack:
            return f"total weight {weight:.6g} of {count} nodes exceeds {count} x the weight cap {cap:.6g}"
        clip = self.tm.strategy.clip
        if clip is None or r.stats:
            return ""
        delta = self.tm.compression.update.delta
        if not delta and self.reference is None:
            return "no global model here to check the summed change against"
        change = vec[:-1] if delta else vec[:-1] - weight * flatten(self.reference or {}, r.shapes)
        length = float(np.linalg.norm(change))
        if length > weight * clip * (1 + 1e-9) + slack * np.sqrt(len(change)) * max(1.0, weight):
            return f"summed change of norm {length:.6g} exceeds total weight {weight:.6g} x clip_norm {clip:.6g}"
        return ""

    def on_update(self, node: str, payload: bytes, topic: str) -> None:
        """A node's update: check everything, then fold it into the sums."""
        if self._refused(
            topic,
            [
                (
                    self.membership.group_path(node) != self.group.path,
                    "unknown node",
                    f"{node!r} is not a member of group {self.label}",
                )
            ],
        ):
            return
        digest = hashlib.sha256(payload).digest()
        if digest in self.counted:
            # the same message again in its own round: a node resending to a restarted aggregator, or QoS 1
            # delivering twice (a copy of an earlier round's update is refused as stale: a replay shows)
            self.log.debug("update of %s already counted; the copy is dropped", node)
            return
        env = self._decode(payload, topic, Kind.UPDATE, node)
        r = self.current
        if env is None or r is None:
            return
        if r.secure is not None:
            self._on_masked(r, node, env, payload, topic)
            return
        codec = codecs.Codec() if r.stats else self.tm.compression.update
        tensors, reason, detail = self._tensors(env, codec, r.shapes)
        limits, strategy = self.tm.limits, self.tm.strategy
        norm = 0.0
        reference = None if codec.delta else self.reference
        bounded = not r.stats and (strategy.clip is not None or strategy.clip_auto)
        bound = (strategy.clip or r.bounds.norm) if bounded else None
        if (
            tensors is not None
            and not codec.delta
            and reference is None
            and (bounded or (limits.max_update_norm is not None and not r.stats))
        ):  # bounding needs the global model: a restarted edge may hear the start and updates before it
            self.waiting.append((node, payload, topic))
            self.log.info("round %d: holding %s's update until the global model arrives", r.ctl.round, node)
            return
        if tensors is not None and not r.stats and (limits.max_update_norm is not None or bounded):
            norm = codecs.norm(tensors, reference)
        if self._refused(
            topic,
            [
                (node not in r.direct, "unselected node", f"{node} was not selected for round {r.ctl.round}"),
                (node in r.answered, "duplicate", f"{node} already answered round {r.ctl.round}"),
                *self._update_checks(env, tensors, reason, detail, norm),
            ],
        ) or not self._first_time(payload, topic, node):
            return
        r.answered.add(node)
        self.counted.add(digest)
        r.nodes.append(node)
        r.norms.append(norm)
        if self.group.workers > 1:  # the other workers of this group learn that this node is in
            self.publish(
                self.topics.progress(self.group.path, self.worker),
                json.dumps({"v": 1, "round": r.ctl.round, "attempt": r.ctl.attempt, "nodes": [node]}).encode(),
                False,
            )
        assert tensors is not None
        if bound is not None:
            tensors = clip_update(tensors, reference, bound, norm)
            if norm > bound:
                r.metrics.merge({"clipped": 1.0}, {})
        weight = self._weight(r, env.samples)
        if r.stack is not None:
            r.stack.add(tensors, weight)
        r.sums.add(tensors, weight)
        r.metrics.add({k: v for k, v in env.metrics.items() if k != "bytes_in"}, env.samples)
        r.metrics.merge(
            {
                "bytes_down": env.metrics.get("bytes_in", 0.0),
                "bytes_update": float(len(payload)),
                "bytes_update_tensors": float(sum(t.nbytes for t in env.tensors.values())),
            },
            {},
        )
        r.bytes_up += len(payload)
        self._maybe_close()

    def _weight(self, r: _Round, samples: float) -> float:
        """What an update counts with: 1 under DP-FedAvg (every node equally), else its sample count, capped
        at the round's weight cap (statistics too: a claimed count must not set the federation's scaling)."""
        if self.tm.strategy.privacy is not None and not r.stats:
            return 1.0
        if r.bounds.weight is not None and samples > r.bounds.weight:
            r.metrics.merge({"capped": 1.0}, {})
            return r.bounds.weight
        return samples

    def _update_checks(
        self, env: Envelope, tensors: Optional[Dict[str, codecs.Decoded]], reason: str, detail: str, norm: float
    ) -> List[Tuple[bool, str, str]]:
        """The checks every update passes, sync or async: its tensors decoded and of sane magnitude (no sum of
        them can overflow), its sample count, its norm."""
        limits = self.tm.limits
        return [
            (tensors is None, reason, detail),
            (
                tensors is not None and codecs.max_abs(tensors) * max(env.samples, 1.0) > MAX_WEIGHTED_VALUE,
                "values too large",
                f"an entry times its weight exceeds {MAX_WEIGHTED_VALUE:g}: sums would overflow",
            ),
            (
                not 0 < env.samples <= limits.max_samples or env.samples != int(env.samples),
                "bad sample count",
                f"{env.samples} (limits.max_samples is {limits.max_samples})",
            ),
            (
                limits.max_update_norm is not None and norm > limits.max_update_norm,
                "update norm too large",
                f"{norm:.4g} > limits.max_update_norm {limits.max_update_norm}",
            ),
        ]

    def on_progress(self, worker: str, payload: bytes, topic: str) -> None:
        """Another worker of this (split) group aggregated these nodes: count them as answered here, so that
        every worker closes once the group's selected nodes are all in, wherever they were aggregated."""
        r = self.current
        try:
            msg = json.loads(payload.decode("utf-8"))
            ok = (
                isinstance(msg, dict)
                and msg.get("v") == 1
                and isinstance(msg.get("nodes"), list)
                and all(isinstance(n, str) for n in msg["nodes"])
            )
        except (UnicodeDecodeError, ValueError, RecursionError):
            ok = False
        if not ok or len(payload) > MAX_PROGRESS_BYTES:
            self.rejections.reject("malformed progress", topic)
            return
        if (
            worker == str(self.worker)
            or r is None
            or (msg.get("round"), msg.get("attempt")) != (r.ctl.round, r.ctl.attempt)
        ):
            return  # our own echo, or another round
        r.answered.update(n for n in msg["nodes"] if n in r.direct)
        self._maybe_close()

    def on_partial(self, child: str, payload: bytes, topic: str) -> None:
        """A child group's partial aggregate: check it, then add its sums to ours."""
        env = self._decode(payload, topic, Kind.PARTIAL, child)
        r = self.current
        if env is None or r is None:
            return
        nodes = env.meta.get("nodes", [])
        worker = env.meta.get("worker", 0)
        key = (child, worker)
        child_path = self.group.path + (child,)
        selected = set(r.ctl.selected)
        taken = set(r.nodes)  # a node counted by another worker of the same child must not count twice
        bad_nodes = (
            not isinstance(nodes, list)
            or len(set(map(str, nodes))) != len(nodes)
            or not all(
                isinstance(n, str) and n in selected and n not in taken and self.membership.in_subtree(n, child_path)
                for n in nodes
            )
        )
        rows, row_problem = self._forwarded_rows(env, nodes)
        tracked = self.tm.strategy.clip_auto and not r.stats
        norms = update_bounds.check_norms(env.meta.get("norms"), len(nodes)) if tracked and not bad_nodes else []
        codec = codecs.Codec() if r.stats else self._partial_codec
        tensors, reason, detail = self._tensors(env, codec, r.shapes) if nodes and not bad_nodes else ({}, "", "")
        if self._refused(
            topic,
            [
                (
                    key not in r.children,
                    "unexpected partial",
                    f"child {child!r} (worker {worker!r}) has no selected nodes this round, or no such worker",
                ),
                (key in r.reported, "duplicate", f"child {child!r} (worker {worker}) already reported"),
                (bad_nodes, "bad node list", "nodes must be distinct selected members of the child group"),
                (not nodes and bool(env.tensors), "bad node list", "tensors without contributing nodes"),
                (tensors is None, reason, detail),
                (bool(row_problem), "bad update rows", row_problem),
                (norms is None, "bad update norms", "meta.norms must list one finite norm >= 0 per node"),
            ],
        ) or not self._first_time(payload, topic, child):
            return
        if r.stack is not None and rows is not None:
            r.stack.merge({"@rows": rows[0], "@row_weights": rows[1]}, env.samples)
        assert norms is not None
        r.reported.add(key)
        r.nodes.extend(nodes)
        r.norms.extend(norms)
        r.sums.merge(env.tensors, env.samples)
        r.metrics.merge_wire({k: v for k, v in env.metrics.items() if k != "bytes_up"})
        r.bytes_up += len(payload) + env.metrics.get("bytes_up", 0.0)
        self._maybe_close()

    def _forwarded_rows(self, env: Envelope, nodes: object) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray]], str]:
        """Take a partial's forwarded updates (``@rows``, ``@row_weights``: robust strategies) out of its
        tensors; returns them, or the problem with them."""
        rows, weights = env.tensors.pop("@rows", None), env.tensors.pop("@row_weights", None)
        if self.current is None or self.current.stack is None:
            return None, "" if rows is None and weights is None else "update rows sent to a group that sums"
        n = len(nodes) if isinstance(nodes, list) else -1
        width = self.current.stack.width
        if (
            rows is None
            or weights is None
            or rows.shape != (n, width)
            or weights.shape != (n,)
            or rows.dtype != np.float32
            or weights.dtype != np.float64
            or (weights <= 0).any()
        ):
            return (
                None,
                f"a robust strategy needs @rows (float32 [{n}, {width}]) and @row_weights (positive float64 [{n}])",
            )
        return (rows, weights), ""

    # --- closing -----------------------------------------------------------------------------------

    def _maybe_close(self) -> None:
        r = self.current
        # answered is a subset of direct and reported of children (checked on arrival): counting is enough,
        # and keeps a round O(updates), not O(updates x group size).
        if r is not None and len(r.answered) == len(r.direct) and len(r.reported) == len(r.children):
            self._close("all in")

    def _close(self, why: str) -> None:
        r = self.current
        assert r is not None
        self.current = None
        for _node, _payload, topic in self.waiting:  # the model never came in time: counted, not silent
            self.rejections.reject("no reference model", topic, "the global model did not arrive before the close")
        self.waiting.clear()
        self.log.info("round %d: closing (%s) with %d of %d nodes", r.ctl.round, why, len(r.nodes), len(r.ctl.selected))
        self._closed(
            r.ctl,
            GroupResult(
                sums=r.sums, nodes=r.nodes, metrics=r.metrics, bytes_up=r.bytes_up, stack=r.stack, norms=r.norms
            ),
        )

    def _closed(self, ctl: Control, result: GroupResult) -> None:
        """Hand a closed round's result upwards: to the round driver at the root, else as a partial."""
        for observe in self.observers:
            observe(self.group.path, ctl, result)
        if self.is_root:
            assert self.on_root_close is not None
            self.on_root_close(ctl, result)
        elif ctl.selected:  # a group with no selected node this round owes its parent nothing
            self._send_partial(ctl, result)

    def _send_partial(self, ctl: Control, result: GroupResult) -> None:
        """Publish ``result`` as this group's partial aggregate for the parent's round ``ctl``, with what this
        process refused since its last partial (an edge's refusals reach the root's round summary)."""
        for reason, n in sorted(self.rejections.take_round().items())[:MAX_FORWARDED_REASONS]:
            result.metrics.merge({REJECTED + reason: float(n)}, {})
        metrics = result.metrics.to_wire()
        metrics["bytes_up"] = result.bytes_up
        tensors = result.sums.to_partial()
        if result.stack is not None and result.stack.rows:  # robust: the root needs every update, not only the sums
            tensors.update(result.stack.to_partial())
        env = Envelope(
            kind=Kind.PARTIAL,
            federation=self.tm.federation,
            round=ctl.round,
            attempt=ctl.attempt,
            sender=self.group.name,
            model_version=ctl.model_version,
            tensors=tensors,
            samples=result.sums.weight,
            metrics=metrics,
            meta={
                "nodes": result.nodes,
                **({"worker": self.worker} if self.group.workers > 1 else {}),
                **({"norms": result.norms} if self.tm.strategy.clip_auto and ctl.task != "stats" else {}),
            },
            codec_params=(codecs.Codec() if ctl.task == "stats" else self._partial_codec).params(),
        )
        parent = self.group.path[:-1]
        self.publish(self.topics.partial(parent, self.group.name), seal(env, self.auth), False)
