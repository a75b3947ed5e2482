"""A coordinator process: one MQTT link, the group aggregators it serves, and (at the root) the
round driver. ``fedmq coordinator run`` serves the root and every group outside edge subtrees;
``fedmq coordinator edge --group PATH`` serves one edge subtree with the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from fedmq.coordinator import checkpoint
from fedmq.coordinator.async_group import AsyncGroup
from fedmq.coordinator.async_rounds import AsyncDriver
from fedmq.coordinator.edge_schedule import ScheduledGroup
from fedmq.coordinator.enrolment import Enrolment
from fedmq.coordinator.group import GroupAggregator
from fedmq.coordinator.guards import RateLimiter
from fedmq.coordinator.presence import Presence
from fedmq.coordinator.progress import changed, round_state
from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.rounds import CheckpointFailed, FederationFailed, RoundDriver
from fedmq.coordinator.tree import Membership, served_groups
from fedmq.shared import codecs
from fedmq.shared.envelope import Kind
from fedmq.shared.identities import COORDINATOR, edge_id
from fedmq.shared.messages import Control, MessageError
from fedmq.shared.models import expected_shapes
from fedmq.shared.mqtt import Message, MqttLink
from fedmq.shared.signing import Auth, open_envelope, reload_keys
from fedmq.shared.topicmap import TopicMap
from fedmq.shared.topicmap.model import GroupPath

if TYPE_CHECKING:
    from fedmq.coordinator.metrics import ProcessMetrics

log = logging.getLogger("fedmq.coordinator")
GROUP_KINDS = ("update", "partial", "secagg", "progress")  # <group>/_<kind>/<sender>: on_<kind> of that group
PROGRESS_S = 0.5  # the round's progress is published at most this often


def share_name(federation: str, path: GroupPath, key: str) -> str:
    """The name of a split group's shared subscription. Mosquitto's ACL cannot refuse a subscription, and any
    client that joins the share group is handed a share of the updates (then dropped for lack of read
    right): with the group's secret ``key`` the name cannot be guessed, so only the workers can join."""
    if not key:
        return f"fedmq-{federation}-{'-'.join(path)}"
    return "fedmq-" + hashlib.sha256(f"{key}\n{federation}\n{'/'.join(path)}".encode()).hexdigest()[:32]


class CoordinatorService:
    """Serves the root (``edge=None``) or one edge subtree of a federation until stopped or finished."""

    def __init__(self, tm: TopicMap, *, edge: Optional[GroupPath] = None, fresh: bool = False,
                 on_round: Optional[Callable[[Dict[str, Any]], None]] = None, signing_key: Optional[str] = None,
                 worker: int = 0, share_key: str = "", metrics_address: Optional[str] = None) -> None:
        self.tm = tm
        self.auth: Optional[Auth] = None
        if tm.security.signatures:  # the root signs as the coordinator, an edge as edge/<path> with its own key
            assert tm.security.keys and tm.security.signing_key
            self.auth = Auth(COORDINATOR if edge is None else edge_id(edge, worker),
                             signing_key or tm.security.signing_key, tm.security.keys)
        self.topics = tm.topics()
        self.rejections = Rejections(log)
        self.membership = Membership(tm)
        self.presence = Presence(self.membership, self.rejections, tm.limits.max_tracked_nodes, log,
                                 trusted=self._trusted if self.auth is not None else None)
        self.limiter = RateLimiter(tm.limits.max_messages_per_node_s, tm.limits.message_burst,
                                   tm.limits.max_tracked_nodes)
        self.retained: Dict[str, bytes] = {}  # last payload of every retained topic we own, for republishing
        self.stopping = threading.Event()
        self._progress: Optional[Dict[str, Any]] = None
        self._progress_at = -float("inf")
        name = "root" if edge is None else "edge-" + "-".join(edge) + (f"-w{worker}" if worker else "")
        self.link = MqttLink(f"fedmq-{tm.federation}-{name}", tm.broker,
                             max_packet_bytes=tm.limits.max_message_bytes + 1024,
                             chunk_bytes=tm.transport.max_payload_bytes, chunk_timeout_s=tm.transport.chunk_timeout_s,
                             on_reject=self.rejections.reject, admit_chunk=self._admit,
                             no_retain=self._sent_not_kept, log=log)
        asynchronous = tm.strategy.mode == "async"
        self.groups: Dict[GroupPath, GroupAggregator] = {}
        for g in served_groups(tm, edge):
            schedule = tm.strategy.edge_rounds_at(len(g.path))
            if asynchronous:
                agg: GroupAggregator = AsyncGroup(tm, g, self.membership, self._publish, self.rejections,
                                                  auth=self.auth, worker=worker)
            elif schedule > 1:
                agg = ScheduledGroup(
                    tm, g, self.membership, self._publish, self.rejections, edge_rounds=schedule, auth=self.auth,
                    worker=worker)
                for depth in range(1, len(g.path)):  # ancestors' models: edge rounds may start from one
                    self.link.subscribe(self.topics.group_model(g.path[:depth]))
            else:
                agg = GroupAggregator(tm, g, self.membership, self._publish, self.rejections, auth=self.auth,
                                      worker=worker)
            self.groups[g.path] = agg
        self.metrics_address = metrics_address or tm.monitoring.address
        self.metrics = self._metrics(self.metrics_address)
        self.on_round = on_round
        self.driver: Optional[RoundDriver] = None
        if edge is None:
            self.driver = (AsyncDriver if asynchronous else RoundDriver)(
                tm,
                self.groups[()],
                self.presence,
                self._publish,
                self.rejections,
                fresh=fresh,
                on_round=self._round_applied,
                auth=self.auth,
            )
            if self.metrics is not None and self.driver.state.rounds_done and tm.checkpoint_dir:
                self.metrics.checkpoint_written(checkpoint.written_at(tm.checkpoint_dir))
        self._subscribe(tm.groups() if edge is None else self.groups, share_key)
        self.enrolment: Optional[Enrolment] = None
        if edge is None and tm.security.dir:
            self.enrolment = Enrolment(tm, self._publish, self.rejections, self._enrolled)
            self.link.subscribe(self.enrolment.subscription())

    def _metrics(self, address: Optional[str]) -> "Optional[ProcessMetrics]":
        """Prometheus metrics fed by this process's groups, rejections and presence, when an address is set."""
        if not address:
            return None
        from fedmq.coordinator.metrics import ProcessMetrics

        metrics = ProcessMetrics(self.tm, self.membership, list(self.groups), per_node=self.tm.monitoring.per_node)
        for agg in self.groups.values():
            agg.observers.append(metrics.group_closed)
        self.rejections.listeners.append(metrics.rejected_message)
        metrics.watch_presence(self.presence.online, lambda node: self.presence.data.get(node, {}))
        return metrics

    def _round_applied(self, summary: Dict[str, Any]) -> None:
        if self.metrics is not None:
            if self.tm.checkpoint_dir:
                self.metrics.checkpoint_written()
            self.metrics.round_applied(summary)
        if self.on_round is not None:
            self.on_round(summary)

    def _enrolled(self, node: str) -> None:
        """A new node has credentials: trust its signing key from now on."""
        if self.auth is not None:
            self.auth.reload(force=True)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            self.retained[topic] = payload
        self.link.publish(topic, payload, retain=retain)
        if self.topics.parse_group(topic, "control") is not None:
            # Child groups in this process hear their parent's control at once, not after a broker round
            # trip: quicker, and the last "done" is relayed even though the process exits right after it.
            # The copy that comes back through the broker is recognised (same round and attempt).
            self._on_parent_control(Message(topic, payload, False))

    def _republish(self) -> None:
        """After a reconnect, publish our retained state again: a broker killed before it saved its
        persistence file has lost the model, the model file and the round controls."""
        log.warning("reconnected: republishing %d retained messages", len(self.retained))
        for topic, payload in list(self.retained.items()):
            self.link.publish(topic, payload, retain=True)

    @property
    def finished(self) -> bool:
        """True once the root has applied every round."""
        return self.driver is not None and self.driver.finished

    def run(self, *, until_finished: bool = True) -> None:
        """Connect and serve; the root returns once all rounds are applied (when ``until_finished``). The root
        holds its checkpoint directory while it runs (CheckpointFailed if another coordinator does)."""
        held = None
        if self.driver is not None and self.tm.checkpoint_dir:
            try:
                held = checkpoint.lock(self.tm.checkpoint_dir)
            except checkpoint.CheckpointError as exc:
                raise CheckpointFailed(str(exc)) from None
        if self.metrics is not None and self.metrics_address is not None:
            self.metrics.serve(self.metrics_address)
        try:
            self._serve(until_finished)
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            if held is not None:
                held.close()

    def _serve(self, until_finished: bool) -> None:
        self.link.start(wait_s=None)
        while not self.link.connected.wait(0.2):  # each failed attempt is logged with its reason by the link
            if self.stopping.is_set():  # SIGTERM while the broker is unreachable: stop now, not at SIGKILL
                self.link.stop()
                return
        if self.driver is not None:
            self.driver.begin()
        seen_connects = self.link.connects
        try:
            while not self.stopping.is_set() and not (until_finished and self.finished):
                if self.link.connects != seen_connects and self.link.connected.is_set():
                    seen_connects = self.link.connects
                    self._republish()
                msg = self.link.get(timeout=self._timeout())
                if msg is not None:
                    self._handle(msg)
                self._tick()
        finally:
            if self.finished and self.link.connected.is_set():
                self._publish_progress()  # "done", for monitors
            self.link.stop()

    def _subscribe(self, status_groups: Iterable[GroupPath], share_key: str) -> None:
        """What this process listens to: its groups' updates (shared between a split group's workers),
        partials, secure aggregation and parent control, the statuses of ``status_groups``. The model comes
        first: a restarted edge gets the retained model before the retained start of the round it reopens."""
        t = self.topics
        self.link.subscribe(t.model())
        for path, agg in self.groups.items():
            if agg.group.workers > 1:  # the broker hands each update to one of the group's workers
                share = share_name(self.tm.federation, path, share_key)
                self.link.subscribe(f"$share/{share}/{t.leaves(path, 'update')}")
                self.link.subscribe(t.leaves(path, "progress"))
            else:
                self.link.subscribe(t.leaves(path, "update"))
            self.link.subscribe(t.leaves(path, "partial"))
            if self.tm.strategy.secure is not None:
                self.link.subscribe(t.leaves(path, "secagg"))
            if path:
                self.link.subscribe(t.control(path[:-1]))
        for path in status_groups:
            self.link.subscribe(t.status_filter(path))

    def _handle(self, msg: Message) -> None:
        """Dispatch one message; an internal error drops it (counted), a failed federation stops the service."""
        try:
            self.dispatch(msg)
        except FederationFailed:
            raise
        except Exception:  # one bad message must never take the coordinator down
            log.exception("internal error while handling a message on %s; dropped it", msg.topic)
            self.rejections.reject("internal error", msg.topic)

    def _tick(self) -> None:
        """What runs after every message or timeout: deadlines, round starts, enrolment, metrics, progress,
        rotated keys."""
        now = time.time()
        for agg in self.groups.values():
            agg.tick(now)
        if self.driver is not None and self.link.connected.is_set():
            self.driver.tick(now)
            self._publish_progress()
        if self.enrolment is not None:
            self.enrolment.tick()
        if self.metrics is not None:
            self.metrics.refresh()
        if self.auth is not None:
            for party in reload_keys(self.auth, log):  # a revoked node's open round waits for it no longer
                for agg in self.groups.values():
                    agg.revoked(party)

    def _trusted(self, node: str) -> bool:
        """Whether ``node`` still has a key in keys.json (where the federation signs)."""
        return self.auth is None or node in self.auth.keyring.keys

    def _publish_progress(self) -> None:
        """The round's progress on ``_round`` (retained) when it changed, looked at most every ``PROGRESS_S``."""
        if time.monotonic() - self._progress_at < PROGRESS_S and not self.finished:
            return
        assert self.driver is not None
        self._progress_at = time.monotonic()  # computed at most every PROGRESS_S: the loop runs once per message
        state = round_state(self.driver, self.groups)
        if changed(self._progress, state):
            self._progress = state
            self._publish(self.topics.round_state(), json.dumps(state, separators=(",", ":")).encode(), True)

    def stop(self) -> None:
        """Ask ``run`` to return."""
        self.stopping.set()

    def _timeout(self) -> float:
        deadlines = [d for d in (a.next_deadline() for a in self.groups.values()) if d is not None]
        if not deadlines:
            return 0.1
        return min(0.1, max(0.0, min(deadlines) - time.time()))

    def dispatch(self, msg: Message) -> None:
        """Route one message to the aggregator or the presence table it concerns."""
        t = self.topics
        if msg.topic == t.model():
            self._on_model(msg.payload)
            return
        group = t.parse_group(msg.topic, "model")
        if group is not None:
            self._on_group_model(group, msg.payload, msg.topic)
            return
        if not msg.retain and not msg.chunked and not self._admit(msg.topic):
            self.rejections.reject(
                "rate limit", msg.topic, f"over limits.max_messages_per_node_s {self.tm.limits.max_messages_per_node_s}"
            )
            return
        if self.enrolment is not None and msg.topic.startswith(t.enrol_request("")):
            self.enrolment.handle(msg.topic.rsplit("/", 1)[1], msg.payload, msg.topic)
            return
        if self._to_group(msg):
            return
        parsed = t.parse_last(msg.topic, "status")
        if parsed:
            state = self.presence.on_status(parsed[0], parsed[1], msg.payload, msg.topic)
            if state == "offline" and parsed[0] in self.groups:
                self.groups[parsed[0]].node_offline(parsed[1])
            return
        if t.parse_group(msg.topic, "control") is not None:
            self._on_parent_control(msg)

    def _to_group(self, msg: Message) -> bool:
        """Hand an update, partial, secure-aggregation or progress message to the group it is for; False if
        the message is none of these for a group served here."""
        for kind in GROUP_KINDS:
            parsed = self.topics.parse_last(msg.topic, kind)
            if parsed and parsed[0] in self.groups:
                if not (kind == "secagg" and parsed[1].startswith("_")):  # not our own messages to the nodes
                    getattr(self.groups[parsed[0]], f"on_{kind}")(parsed[1], msg.payload, msg.topic)
                return True
        return False

    @staticmethod
    def _sent_not_kept(topic: str) -> bool:
        """Updates, partials and secure-aggregation messages are never retained: a node that publishes them
        retained would have the broker store them (without bound) and replay them on every subscription."""
        parts = topic.rsplit("/", 2)
        return len(parts) == 3 and parts[1] in ("_update", "_partial", "_secagg")

    def _admit(self, topic: str) -> bool:
        """Rate limits per sender, keyed by the group's topic and the node id (a flood on one node's topic in
        another group, or on another node's, never spends this node's budget); a chunked message counts once,
        at its first chunk, before anything is reassembled."""
        parts = topic.rsplit("/", 2)
        if len(parts) == 3 and parts[1] in ("_update", "_status", "_partial", "_secagg"):
            return self.limiter.allow(f"{parts[0]}/{parts[2]}")
        return True

    def _model_tensors(
        self, payload: bytes, topic: str, signers: Tuple[str, ...]
    ) -> Optional[Tuple[int, Dict[str, np.ndarray]]]:
        """(version, float64 tensors) of a model envelope signed by one of ``signers``; None if rejected."""
        try:
            env = open_envelope(
                payload,
                federation=self.tm.federation,
                kind=Kind.MODEL,
                auth=self.auth,
                max_bytes=self.tm.limits.max_message_bytes,
                signers=signers,
                fresh=False,
            )
            tensors = codecs.decode(env.codec, env.codec_params, env.tensors, expected_shapes(self.tm.model))
        except ValueError as exc:  # a Rejected names its reason; a codec problem is a malformed model
            self.rejections.reject(getattr(exc, "reason", "malformed model"), topic, str(exc))
            return None
        return env.model_version, codecs.to_dense(tensors, np.float64)

    def _on_model(self, payload: bytes) -> None:
        """The global model (ours echoed back, or the root's at an edge) is the reference for norm bounds."""
        model = self._model_tensors(payload, self.topics.model(), (COORDINATOR,))
        if model is not None:
            for agg in self.groups.values():
                agg.set_model(*model)

    def _on_group_model(self, path: GroupPath, payload: bytes, topic: str) -> None:
        """An edge group's model between its edge rounds: a child group's edge round may start from it."""
        model = self._model_tensors(payload, topic, (edge_id(path), COORDINATOR))
        if model is not None:
            for agg in self.groups.values():
                if isinstance(agg, ScheduledGroup) and agg.group.path[: len(path)] == path:
                    agg.set_group_model(path, *model)

    def _on_parent_control(self, msg: Message) -> None:
        parent = self.topics.parse_group(msg.topic, "control") or ()
        try:
            ctl = Control.decode(msg.payload)
        except MessageError as exc:
            self.rejections.reject("malformed control", msg.topic, str(exc))
            return
        for path, agg in self.groups.items():
            if path and path[:-1] == parent:
                if ctl.type in ("start", "async"):
                    agg.start(ctl)
                else:
                    agg.relay_close(ctl)
