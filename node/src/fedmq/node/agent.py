"""The node's main loop: announce, wait for rounds that select it, train, publish the update.

Data path: model topic (retained envelope) -> ``_on_model`` -> trainer weights;
control topic (round start) -> ``_on_control`` -> ``_train_if_ready`` -> update envelope -> update topic.
In async mode (an ``async`` control) the node trains on the newest model it has, once per model version,
whenever no message is waiting. A ``stats`` start asks for feature statistics instead (federated
scaling). A live data source is read again before every round, and the data is checked against the
model: a problem is published in the node's status, and the node takes no part until it is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, Optional, Set, Tuple

import numpy as np

from fedmq.node.config import NodeConfig
from fedmq.node.global_model import as_saved, open_model
from fedmq.node.model_files import ModelFileCache, check_announcement
from fedmq.node.privacy import privatize
from fedmq.node.trainers import Trainer, TrainerUnavailable, make_trainer
from fedmq.shared import PROTOCOL_REVISION, __version__, codecs
from fedmq.shared.data import DataError, DataSource
from fedmq.shared.datacheck import checked_data
from fedmq.shared.envelope import Envelope, EnvelopeError, Kind
from fedmq.shared.files import remove_leftovers
from fedmq.shared.identities import COORDINATOR, edge_id
from fedmq.shared.logs import Context
from fedmq.shared.messages import Control, MessageError, Status, TrainParams
from fedmq.shared.models import Weights, expected_shapes
from fedmq.shared.mqtt import Message, MqttLink, PayloadTooLarge
from fedmq.shared.saved_model import ModelFileError, read_model
from fedmq.shared.scaling import Scaling, local_stats
from fedmq.shared.secagg.messages import SecAggMessage
from fedmq.shared.signing import Auth, reload_keys, seal
from fedmq.shared.topicmap import ModelSpec
from fedmq.shared.topics import Topics

if TYPE_CHECKING:
    from fedmq.node.secure_client import SecureClient
    from fedmq.node.serve.server import Server

RECHECK_S = 10.0  # how often data with a problem is read and checked again
RELOAD_S = 60.0  # how often a live source is read again between rounds (always at a round's start)
STATUS_S = 60.0  # the status is published again at least this often while online (its last_seen)
ROUND_STATUS_S = 10.0  # ... and after a round or a drop, at most this often (the coordinator flags 8 a minute)


def global_model_path(cache_dir: str, node_id: str) -> str:
    """Where a node keeps its copy of the latest global model: one file per node id, so nodes sharing a
    cache directory never touch each other's copy."""
    return os.path.join(cache_dir, f"global-model-{node_id}.fmq")


class NodeAgent:
    """One federated node: holds its data, its trainer and its MQTT link."""

    def __init__(self, cfg: NodeConfig, x: np.ndarray, y: np.ndarray, *, source: Optional[DataSource] = None,
                 log: Optional[logging.Logger] = None) -> None:
        self.cfg = cfg
        self.x, self.y = x, y
        self.source = source
        self.problem = ""  # why the node cannot take part now ('' when it can)
        self.trainer_problem = ""  # no trainer here for the federation's model
        self.scaling: Optional[Scaling] = None
        self._checked_at = 0.0
        self._checked_for: Optional[ModelSpec] = None  # the spec the samples were last checked against
        self._data_problem = ""
        self._scaled_in_place: Optional[Scaling] = None  # a live source's x, standardised where it lies
        self.log = log or logging.getLogger(f"fedmq.node.{cfg.node_id}")
        self.log.addFilter(Context(node=cfg.node_id, group="/".join(cfg.group), federation=cfg.federation))
        self.topics = Topics(cfg.federation, cfg.broker.topic_prefix)
        self.status_topic = self.topics.status(cfg.group, cfg.node_id)
        self.trainer: Optional[Trainer] = None
        self.spec: Optional[ModelSpec] = None
        self.model: Optional[Tuple[int, Weights]] = None
        self.file_sha: Optional[str] = None
        self.auth: Optional[Auth] = None
        if cfg.security.signing_key and cfg.security.keys:
            self.auth = Auth(cfg.node_id, cfg.security.signing_key, cfg.security.keys)
        self.files = ModelFileCache(cfg.cache_dir, self.log)
        self.model_path = global_model_path(cfg.cache_dir, cfg.node_id)
        remove_leftovers(self.model_path)  # a save cut short by SIGKILL or a power cut
        self.server: Optional["Server"] = None
        self.encoder = codecs.UpdateEncoder(codecs.Codec())
        self._warned_proximal = False
        self.pending: Optional[Control] = None
        self.session: Optional[Control] = None  # async mode
        self.answered: Set[Tuple[int, int, int]] = set()  # (round, attempt, model version)
        # the last update sent, to send again if the broker lost it with our session: (key, topic, payload)
        self.last_update: Optional[Tuple[Tuple[int, int, int], str, bytes]] = None
        self._opened = 0  # the aggregator process that opened the round last_update answers
        self._sessions_lost_seen = 0
        self.rounds_done = 0
        self.last_round = 0  # the last round this node trained (sent an update for)
        self._status_content = b""
        self._status_at = -float("inf")
        self._status_round = 0
        self._status_counts: Dict[str, Any] = {}
        self.finished = threading.Event()
        self.stopping = threading.Event()
        self.straggler_rng = np.random.default_rng([cfg.seed, zlib.crc32(cfg.node_id.encode()), 1])
        self._bytes_in_reported = 0
        self.link = MqttLink(
            f"fedmq-{cfg.federation}-{cfg.node_id}", cfg.broker,
            will=(self.status_topic, Status(cfg.node_id, "offline").encode()),
            birth=(self.status_topic, self._status(time.time())), max_packet_bytes=cfg.max_message_bytes,
            chunk_bytes=cfg.max_payload_bytes, log=self.log)
        self.link.subscribe(self.topics.model())
        self.link.subscribe(self.topics.control(cfg.group))
        self.group_models: Dict[Tuple[str, ...], Tuple[int, Weights]] = {}  # HierFAVG: models of our groups
        for depth in range(1, len(cfg.group) + 1):
            self.link.subscribe(self.topics.group_model(cfg.group[:depth]))
        self.secure: Optional["SecureClient"] = None
        self.secagg_topics = (self.topics.secagg_all(cfg.group), self.topics.secagg_to(cfg.group, cfg.node_id))
        for topic in self.secagg_topics:
            self.link.subscribe(topic)

    def run(self, *, exit_when_done: bool = False) -> None:
        """Connect (retrying with backoff) and serve rounds until stopped or, optionally, the federation is done."""
        self.log.info("node %s in group %s: %d samples; connecting to %s:%d", self.cfg.node_id,
                      "/".join(self.cfg.group) or "(root)", len(self.x), self.cfg.broker.host, self.cfg.broker.port)
        if self.source is not None and self.source.live:
            self.source.start(self.log)
        if self.cfg.serve is not None:
            self._start_serving()
        self.refresh_data()
        self.link.start(wait_s=None)
        try:
            while not self.stopping.is_set() and not (exit_when_done and self.finished.is_set()):
                msg = self.link.get(timeout=0.5)
                while msg is not None:  # all that is waiting first: train on the newest model only
                    self.handle(msg)
                    msg = self.link.get(timeout=0)
                if self.problem or (self.source is not None and self.source.live):
                    # a problem may clear as data changes; a live source's sample count goes into the status
                    if time.monotonic() - self._checked_at >= (RECHECK_S if self.problem else RELOAD_S):
                        self.refresh_data()
                self._train_async()
                self.publish_status()
                if self.auth is not None:
                    reload_keys(self.auth, self.log)
        finally:
            if self.server is not None:
                self.server.stop()
            self.link.stop(final=(self.status_topic, Status(self.cfg.node_id, "offline").encode()))
            if self.source is not None and self.source.live:
                self.source.stop()

    # --- the model on the gateway ------------------------------------------------------------------

    def _start_serving(self) -> None:
        """Serve predictions, starting with the saved copy of the global model (no coordinator needed)."""
        from fedmq.node.serve.server import Server

        assert self.cfg.serve is not None
        self.server = Server(self.cfg.node_id, self.cfg.federation, self.cfg.serve, self.source, self.log,
                             model_file=lambda m: self.files.get(m.file_sha256) if m.file_sha256 else None,
                             seed=self.cfg.seed)
        if os.path.exists(self.model_path):
            try:
                saved = read_model(self.model_path)
                self.log.info("serving: the saved global model %d (%s)", saved.model_version, self.model_path)
                self.server.offer(saved)
            except ModelFileError as exc:
                self.log.error("serving: %s; waiting for the next global model", exc)
        self.server.start()

    def _keep_model(self, env: Envelope, tensors: Weights) -> None:
        """Save the accepted global model (atomically, with its scaling and feature names) and serve it."""
        names = tuple(getattr(self.source, "feature_names", lambda: [])())
        saved = as_saved(env, tensors)
        if len(names) == saved.spec.features:
            saved = replace(saved, feature_names=names)
        try:
            saved.save(self.model_path)
        except OSError as exc:
            self.log.error("cannot save the global model to %s: %s (it is served from memory until a restart)",
                           self.model_path, exc)
        if self.server is not None:
            self.log.debug("model %d offered to serving", saved.model_version)
            self.server.offer(saved)

    # --- data ----------------------------------------------------------------------------------------

    def _status(self, seen: float = 0.0, last_round: int = 0, data: bool = False) -> bytes:
        """The retained 'online' status: samples, the trainer used, data source, data problem, versions, and
        (when it is published) ``seen``, the last round trained and what the live stream dropped."""
        return Status(self.cfg.node_id, "online", samples=len(self.x),
                      trainer=self.trainer.name if self.trainer is not None else self.cfg.trainer,
                      source=self.cfg.data.kind, live=bool(self.source is not None and self.source.live),
                      problem=self.problem, last_seen=round(seen, 3), last_round=last_round,
                      version=__version__, protocol=PROTOCOL_REVISION,
                      data=self.stream_counts() if data else {}).encode()

    def stream_counts(self) -> Dict[str, Any]:
        """What a live source dropped and kept unlabelled so far (the non-zero counts), for the status."""
        if self.source is None or not self.source.live:
            return {}
        c = self.source.counters()
        out = {k: int(c[k]) for k in ("dropped_rows", "unlabelled_rows") if c.get(k)}
        dropped = {str(k)[:64]: int(v) for k, v in sorted(c.get("dropped", {}).items()) if v}
        return {**out, **({"dropped": dict(list(dropped.items())[:32])} if dropped else {})}

    def publish_status(self) -> None:
        """Publish the status when its content changed, after a round (at most every ``ROUND_STATUS_S``: a status
        per round would look like a flapping node), and at least every ``STATUS_S`` (a new ``last_seen``); the
        link announces the newest one again after every reconnect."""
        content = self._status()
        waited = time.monotonic() - self._status_at
        counts = self.stream_counts()
        news = (self.last_round != self._status_round or counts != self._status_counts) and waited >= ROUND_STATUS_S
        if content == self._status_content and waited < STATUS_S and not news:
            return
        self._status_content, self._status_at, self._status_round = content, time.monotonic(), self.last_round
        self._status_counts = counts  # what the stream dropped: said at most every ROUND_STATUS_S
        status = self._status(time.time(), self.last_round, data=True)
        self.link.birth = (self.status_topic, status)
        if self.link.connected.is_set():
            self.link.publish(self.status_topic, status, retain=True)

    def refresh_data(self) -> str:
        """Read a live source again, check the data against the model (once it is known), and publish the
        node's status when its problem changes; returns the problem ('' if none)."""
        self._checked_at = time.monotonic()
        problem = self.trainer_problem
        if not problem and self.source is not None and self.source.live:
            try:
                self.x = self.y = np.zeros((0, 0))  # let the old samples go before the new ones are read
                self.x, self.y = self.source.load()
                self._scaled_in_place = None
            except DataError as exc:
                problem = f"data source: {exc}"
        if not problem and self.spec is not None:
            if self._checked_for != self.spec or (self.source is not None and self.source.live):
                # file data is read once: checked (and its labels normalised) once per model spec
                self.x, self.y, found = checked_data(self.spec, self.x, self.y, self.cfg.min_samples,
                                                     self.source.label_names if self.source is not None else None)
                self._data_problem, self._checked_for = found or "", self.spec
            problem = self._data_problem
        elif not problem and len(self.x) < self.cfg.min_samples:
            problem = f"too few samples: {len(self.x)}, at least {self.cfg.min_samples} needed"
        if problem != self.problem:
            if problem:
                self.log.error("data problem: %s; this node takes no part until it is solved", problem)
            else:
                self.log.info("data: %d samples, no problem any more", len(self.x))
            self.problem = problem
        self.publish_status()
        return problem

    def stop(self) -> None:
        """Ask ``run`` to return."""
        self.stopping.set()

    def handle(self, msg: Message) -> None:
        """Dispatch one message; anything invalid is logged and dropped, never raised."""
        try:
            if msg.topic == self.topics.model():
                self._on_model(msg.payload)
            elif self.topics.parse_group(msg.topic, "model") is not None:
                self._on_group_model(msg.topic, msg.payload)
            elif msg.topic in self.secagg_topics:
                self._on_secagg(msg.payload)
            elif msg.topic.startswith(self.topics.model_file("")):
                self._on_model_file(msg.topic.rsplit("/", 1)[1], msg.payload)
            else:
                self._on_control(Control.decode(msg.payload))
        except (EnvelopeError, MessageError, ValueError) as exc:
            self.log.warning("rejected message on %s: %s", msg.topic, exc)
        except TrainerUnavailable as exc:
            self.log.error("cannot train this model here: %s", exc)
            self.trainer_problem = f"cannot train this model here: {exc}"
            self.refresh_data()

    def _on_model(self, payload: bytes) -> None:
        env, spec, tensors = open_model(payload, self.cfg.federation, self.cfg.max_message_bytes, self.auth,
                                        (COORDINATOR,))
        if self.auth is not None and self.model is not None and env.model_version < self.model[0]:
            raise ValueError(f"old model version {env.model_version} (have {self.model[0]}): replay refused")
        sha = check_announcement(env.meta.get("file"), self.cfg.max_message_bytes)
        scaling = Scaling.from_meta(env.meta.get("scaling"), spec.features)
        self._apply_transport(env.meta)
        self.model = (env.model_version, codecs.to_dense(tensors))
        self.scaling = scaling
        self._keep_model(env, self.model[1])
        if (spec, sha) != (self.spec, self.file_sha):
            self.spec, self.file_sha, self.trainer, self.trainer_problem = spec, sha, None, ""
            self.refresh_data()
            cached = self.files.get(sha) if sha else None
            if sha and cached is None:
                self.log.info("fetching model file %s...", sha[:12])
                self.link.subscribe(self.topics.model_file(sha))
                return
            self._make_trainer(cached)
        self._train_if_ready()

    def _on_group_model(self, topic: str, payload: bytes) -> None:
        """An edge group's model between its edge rounds (signed by that group's aggregator)."""
        path = next((self.cfg.group[:d] for d in range(1, len(self.cfg.group) + 1)
                     if self.topics.group_model(self.cfg.group[:d]) == topic), None)
        if path is None or self.spec is None:
            return
        env, _, tensors = open_model(payload, self.cfg.federation, self.cfg.max_message_bytes, self.auth,
                                     (edge_id(path), COORDINATOR), self.spec)
        if self.auth is not None and path in self.group_models and env.model_version < self.group_models[path][0]:
            raise ValueError(f"old group model version {env.model_version}: replay refused")
        self.group_models[path] = (env.model_version, codecs.to_dense(tensors))
        self._train_if_ready()

    def _apply_transport(self, meta: dict) -> None:
        """Take the update codec and payload cap the coordinator announces with the model."""
        codec = codecs.Codec.from_meta(meta.get("update_codec", codecs.Codec().to_meta()))
        if codec != self.encoder.codec:
            self.log.info("update codec: %s%s", codec.name, " (deltas)" if codec.delta else "")
            self.encoder = codecs.UpdateEncoder(codec)
        cap = meta.get("max_payload_bytes")
        if cap is not None:
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1024:
                raise ValueError("max_payload_bytes must be an integer >= 1024")
            self.link.chunk_bytes = min(cap, self.cfg.max_payload_bytes or cap)

    def _on_model_file(self, sha: str, payload: bytes) -> None:
        if sha != self.file_sha or self.trainer is not None:
            return  # an old or repeated file
        self._make_trainer(self.files.accept(sha, payload))
        self._train_if_ready()

    def _make_trainer(self, model_file: Optional[bytes]) -> None:
        assert self.spec is not None
        self.trainer = make_trainer(self.cfg.trainer, self.spec, model_file)
        self.log.info("model: %s with %d features, trainer %s", self.spec.kind, self.spec.features, self.trainer.name)

    def _on_control(self, ctl: Control) -> None:
        if ctl.type == "done":
            self.log.info("federation finished after round %d", ctl.round)
            self.finished.set()
            self.session = None
            return
        if ctl.type == "async":
            if self.session is None or self.session.attempt != ctl.attempt:
                self.log.info("async session %d: training on every new model version", ctl.attempt)
            elif self.last_update is not None and self.last_update[0][1] == ctl.attempt:
                self._resend_if_lost(self.last_update[0])  # the session's control again, after a reconnect
            self.finished.clear()
            self.session, self.pending = ctl, None
            return
        if ctl.type == "close":
            if self.pending and (self.pending.round, self.pending.attempt) == (ctl.round, ctl.attempt):
                self.pending = None
            return
        self.finished.clear()
        key = (ctl.round, ctl.attempt, ctl.model_version)
        if self.cfg.node_id in ctl.selected and key in self.answered:
            self._resend_if_lost(key, ctl.opened)
            return
        if self.cfg.node_id not in ctl.selected:
            return
        if ctl.deadline_at < time.time():
            self.log.info("round %d: start arrived after its deadline; skipping", ctl.round)
            return
        if self.refresh_data():
            self.log.warning("round %d: selected, but not taking part: %s", ctl.round, self.problem)
            return
        self.pending = ctl
        if ctl.secure is not None:
            self._secure_start(ctl)
        self._train_if_ready()

    def _resend_if_lost(self, key: Tuple[int, int, int], opened: int = 0) -> None:
        """The round we answered is still open (its start came again, as the retained control does after a
        reconnect): if the broker lost our session since, it may have lost our update too, and if another
        aggregator process opened the round since (the one we answered was killed and restarted), what it
        counted is gone: send it again (a duplicate is refused by the aggregator, a lost one now counts)."""
        lost = self.link.sessions_lost != self._sessions_lost_seen
        reopened = bool(opened and self._opened and opened != self._opened)
        if not (lost or reopened):
            return
        self._sessions_lost_seen = self.link.sessions_lost
        if self.last_update is not None and self.last_update[0] == key:
            self._opened = opened or self._opened
            why = "the broker lost our session" if lost else "its aggregator restarted"
            self.log.warning("round %d: %s; sending our update again", key[0], why)
            self.link.publish(self.last_update[1], self.last_update[2])

    def _train_async(self) -> None:
        """Async mode: train once on the newest model version, unless done already."""
        s = self.session
        if s is None or self.model is None or (self.model[0], s.attempt, self.model[0]) in self.answered:
            return
        self.pending = replace(s, round=self.model[0], model_version=self.model[0])
        self._train_if_ready()

    def _scaled(self) -> np.ndarray:
        """The samples standardised with the federation's scaling. A live source's samples are read again
        before every round, so they are scaled where they lie (no second copy of a large training set)."""
        if self.scaling is None:
            if self._scaled_in_place is not None:
                self.refresh_data()
            return self.x
        if self._scaled_in_place == self.scaling:
            return self.x
        if self.source is None or not self.source.live:
            return self.scaling.apply(self.x)
        if self._scaled_in_place is not None:
            self.refresh_data()
        self.scaling.apply(self.x, out=self.x)
        self._scaled_in_place = self.scaling
        return self.x

    def _send_stats(self, ctl: Control) -> None:
        """A statistics round: the per-feature means of x and x squared, weighted by the sample count."""
        if self._scaled_in_place is not None:
            self.refresh_data()  # statistics are of the raw features
        stats = local_stats(self.x)
        self.pending = None
        if ctl.secure is not None:
            assert self.secure is not None
            self.secure.set_input(np.concatenate([stats["mean"], stats["meansq"]]), self._secure_weight(ctl),
                                  np.random.default_rng())
        else:
            self._send_update(ctl, stats, len(self.x), {"bytes_in": self._take_bytes_in()}, codecs.Codec())
        self.log.info("round %d: feature statistics of %d samples sent", ctl.round, len(self.x))

    def _start_model(self, ctl: Control) -> Optional[Weights]:
        """The model a round trains from, once this node has the version it names (global or a group's)."""
        model = self.group_models.get(tuple(ctl.model_group)) if ctl.model_group else self.model
        return model[1] if model is not None and model[0] == ctl.model_version else None

    def _train_if_ready(self) -> None:
        ctl = self.pending
        start = self._start_model(ctl) if ctl is not None else None
        if ctl is None or start is None or self.trainer is None:
            return  # wait for the model version the round names
        if ctl.secure is not None and (self.secure is None or not self.secure.shared):
            return  # first the key exchange's roster (our shares go out, then we train)
        if ctl.task == "stats":
            self._send_stats(ctl)
            return
        assert ctl.train is not None  # a training start always carries its parameters (checked on decode)
        self.pending = None
        if self.cfg.simulate_delay_s:
            time.sleep(self.cfg.simulate_delay_s)
        t0 = time.perf_counter()
        self.trainer.set_weights(start)
        if ctl.train.proximal_mu and not self.trainer.supports_proximal and not self._warned_proximal:
            self._warned_proximal = True
            self.log.warning("the %s trainer cannot add FedProx's proximal term: training plain local SGD "
                             "(use the numpy or tflite trainer for strategy.proximal_mu)", self.trainer.name)
        params = self._straggle(ctl)
        if params is None:
            return
        if self.server is not None:
            self.server.learning_rate = params.learning_rate
        x = self._scaled()
        before = self.trainer.evaluate(x, self.y)
        # the shuffling of a round depends on the node, the round and the model only: a round trained again
        # (after a coordinator restart, a retry, or this node's restart) gives the same update
        rng = np.random.default_rng([self.cfg.seed, zlib.crc32(self.cfg.node_id.encode()), ctl.round,
                                     ctl.model_version])
        train = self.trainer.fit(x, self.y, params, rng)
        weights = self.trainer.get_weights()
        if not all(np.isfinite(w).all() for w in weights.values()):
            self.log.error("round %d: training diverged (NaN/Inf); not sending an update", ctl.round)
            return
        if ctl.train.dp_clip_norm is not None:
            weights = privatize(weights, start, ctl.train.dp_clip_norm, ctl.train.dp_noise_multiplier)
        metrics = {f"eval_{k}": v for k, v in before.items()}
        metrics.update(train)
        metrics["train_seconds"] = time.perf_counter() - t0
        metrics["bytes_in"] = self._take_bytes_in()  # model + control since the last update
        claimed = None
        if self.cfg.simulate_attack is not None:  # testing and benchmarks only: what a malicious node would send
            scale, claimed = self.cfg.simulate_attack
            weights = {k: (start[k] + scale * (w - start[k])).astype(np.float32) for k, w in weights.items()}
        if ctl.secure is not None:
            self._secure_input(ctl, weights, start, metrics, claimed)
            return
        self._send_update(ctl, self.encoder.encode(weights, start), claimed or len(self.x), metrics)
        self.log.info("round %d: trained on %d samples in %.3fs (loss %.4f), update sent", ctl.round, len(self.x),
                      metrics["train_seconds"], train.get("train_loss", float("nan")))

    def _straggle(self, ctl: Control) -> Optional[TrainParams]:
        """The training parameters for this round; under ``simulate_straggler`` (testing), sometimes fewer
        epochs (uniform in 1 .. E-1, as in the FedProx paper) when partial work is allowed, else None: the
        update would miss the deadline and is not sent."""
        assert ctl.train is not None
        if not self.cfg.simulate_straggler or self.straggler_rng.random() >= self.cfg.simulate_straggler:
            return ctl.train
        if not ctl.train.partial_work or ctl.train.local_epochs < 2:
            self.log.info("round %d: simulated straggler, no update before the deadline", ctl.round)
            self.answered.add((ctl.round, ctl.attempt, ctl.model_version))
            return None
        epochs = int(self.straggler_rng.integers(1, ctl.train.local_epochs))
        self.log.info("round %d: simulated straggler, sending %d of %d epochs", ctl.round, epochs,
                      ctl.train.local_epochs)
        return replace(ctl.train, local_epochs=epochs)

    def _send_update(
        self,
        ctl: Control,
        tensors: Dict[str, np.ndarray],
        samples: int,
        metrics: Dict[str, float],
        codec: Optional[codecs.Codec] = None,
    ) -> None:
        codec = codec or self.encoder.codec
        env = Envelope(
            kind=Kind.UPDATE,
            federation=self.cfg.federation,
            round=ctl.round,
            attempt=ctl.attempt,
            sender=self.cfg.node_id,
            model_version=ctl.model_version,
            tensors=tensors,
            samples=samples,
            metrics=metrics,
            codec=codec.name,
            codec_params=codec.params(),
        )
        try:
            payload = seal(env, self.auth)
            topic = self.topics.update(self.cfg.group, self.cfg.node_id)
            self.link.publish(topic, payload)
            self.last_update = ((ctl.round, ctl.attempt, ctl.model_version), topic, payload)
            self._opened = ctl.opened
        except PayloadTooLarge as exc:
            self.log.error("round %d: %s", ctl.round, exc)
            return
        self.answered.add((ctl.round, ctl.attempt, ctl.model_version))
        self.rounds_done += 1
        self.last_round = ctl.round

    # --- secure aggregation ------------------------------------------------------------------------

    def _secure_start(self, ctl: Control) -> None:
        """Advertise this round's keys (before training, so the key exchange runs alongside it)."""
        try:
            from fedmq.node.secure_client import SecureClient

            self.secure = SecureClient(
                self.cfg.node_id,
                self.cfg.federation,
                self.cfg.group,
                (ctl.round, ctl.attempt, ctl.model_version),
                int(ctl.secure.get("frac_bits", 20)) if ctl.secure else 20,
                lambda m: self.link.publish(self.topics.secagg_in(self.cfg.group, self.cfg.node_id), m.encode()),
                lambda y: self._send_update(
                    ctl, {"@masked": y}, 1, {"bytes_in": self._take_bytes_in()}, codecs.Codec()
                ),
                self.log,
            )
        except ImportError:
            self.log.error(
                "this federation uses secure aggregation, which needs the 'cryptography' package: "
                "pip install 'fedmq-node[secure]'"
            )
            self.pending = None

    def _on_secagg(self, payload: bytes) -> None:
        msg = SecAggMessage.decode(payload, ("roster", "deliver", "survivors"))
        if self.secure is not None:
            self.secure.on_message(msg)
            self._train_if_ready()

    def _secure_input(
        self, ctl: Control, weights: Weights, start: Weights, metrics: Dict[str, float], claimed: Optional[int] = None
    ) -> None:
        """Hand the trained update to secure aggregation: only the masked sum leaves the node (no metrics).
        ``claimed`` (simulated attacks only) is a weight that ignores the round's cap."""
        assert self.secure is not None and self.spec is not None and ctl.secure is not None
        shapes = expected_shapes(self.spec)
        delta = self.encoder.codec.delta
        vector = np.concatenate(
            [(np.asarray(weights[k], np.float64) - (start[k] if delta else 0.0)).reshape(-1) for k in shapes]
        )
        weight = 1.0 if ctl.secure.get("equal_weights") else float(claimed) if claimed else self._secure_weight(ctl)
        self.secure.set_input(vector, weight, np.random.default_rng())  # rounding noise: not from the seed
        self.log.info(
            "round %d: trained in %.3fs; masked update %s",
            ctl.round,
            metrics["train_seconds"],
            "sent" if self.secure.masked_sent else "waits for the peers' shares",
        )

    def _secure_weight(self, ctl: Control) -> float:
        """This node's weight in a secure sum: its sample count, capped at the round's ``max_weight`` (the
        group checks the unmasked total against the cap)."""
        cap = ctl.secure.get("max_weight") if ctl.secure else None
        n = float(len(self.x))
        return min(n, float(cap)) if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0 else n

    def _take_bytes_in(self) -> float:
        """Bytes received (model and control) since the last update."""
        n = float(self.link.bytes_in - self._bytes_in_reported)
        self._bytes_in_reported = self.link.bytes_in
        return n
