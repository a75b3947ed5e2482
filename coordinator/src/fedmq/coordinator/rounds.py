"""The root's round driver: pick online nodes, start the round, apply the root's sums when it closes
(if the quorum is met), evaluate, checkpoint, publish the new model and the metrics; retry or stop
when the quorum is missed, as the topic map says. Before round 1 (and on the topic map's schedule) a
statistics round gathers the features' mean and scale (federated scaling), published with the model.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from fedmq.coordinator import checkpoint
from fedmq.coordinator.group import MAX_FORWARDED_REASONS, REJECTED, GroupAggregator, GroupResult
from fedmq.coordinator.presence import Presence
from fedmq.coordinator.rejections import Rejections
from fedmq.coordinator.strategy import bounds as update_bounds
from fedmq.coordinator.strategy.optimizer import make_optimizer
from fedmq.coordinator.strategy.privacy import Accountant
from fedmq.coordinator.strategy.rule import RobustError, buckets, make_rule
from fedmq.coordinator.strategy.trusted import trusted_change
from fedmq.coordinator.strategy.vectors import flatten
from fedmq.node.trainers import TrainerUnavailable, make_trainer
from fedmq.shared.data import DataError, open_source
from fedmq.shared.datacheck import checked_data
from fedmq.shared.envelope import Envelope, Kind
from fedmq.shared.extras import MissingExtra, require
from fedmq.shared.messages import Control, TrainParams, encode_history, encode_metrics, history_rows
from fedmq.shared.models import Weights, evaluate, expected_shapes, from_layers, initial_weights, to_layers
from fedmq.shared.scaling import Scaling, rescale_first_layer
from fedmq.shared.signing import Auth, seal
from fedmq.shared.topicmap import TopicMap

Publish = Callable[[str, bytes, bool], None]


class FederationFailed(RuntimeError):
    """The federation cannot go on (no quorum after the allowed retries, too few nodes online)."""

    exit_code = 1


class CheckpointFailed(FederationFailed):
    """A checkpoint could not be written: the coordinator stops before announcing the round."""

    exit_code = 2


MAX_PROBLEMS_SHOWN = 20


def load_evaluation(tm: TopicMap) -> "Optional[tuple[np.ndarray, np.ndarray]]":
    """The topic map's held-out set, checked against the model; DataError naming the file and the fix."""
    if tm.evaluation is None:
        return None
    x, y = open_source(tm.evaluation).load()
    x, y, problem = checked_data(tm.model, x, y)
    if problem:
        raise DataError(f"{tm.file}: evaluation ({tm.evaluation.path or tm.evaluation.kind}): {problem}; fix the "
                        "data or the topic map's model section")
    return x, y


def select_nodes(online: List[str], tm: TopicMap, rng: np.random.Generator) -> List[str]:
    """A random sample of the online nodes: ``fraction`` of them, clamped to [min_nodes, max_nodes]."""
    p = tm.policy
    k = max(p.min_nodes, math.ceil(p.fraction * len(online) - 1e-9))
    if p.max_nodes is not None:
        k = min(k, p.max_nodes)
    k = min(k, len(online))
    return sorted(rng.choice(sorted(online), size=k, replace=False).tolist())


def build_model_file(tm: TopicMap, weights: Weights) -> "Optional[tuple[str, bytes]]":
    """(sha256, bytes) of the training-capable .tflite for a ``tflite`` model, else None."""
    if tm.model.kind != "tflite":
        return None
    for module in ("flatbuffers", "tflite"):
        require(
            module, "fedmq-coordinator", "tflite", "a model of kind tflite (the coordinator builds its .tflite file)"
        )
    from fedmq.coordinator.tflite_builder import build_dense_model

    data = build_dense_model(tm.model, weights, tm.policy.learning_rate)
    return hashlib.sha256(data).hexdigest(), data


class RoundDriver:
    """Runs the federation's rounds from the root group."""

    def __init__(
        self,
        tm: TopicMap,
        root: GroupAggregator,
        presence: Presence,
        publish: Publish,
        rejections: Rejections,
        *,
        fresh: bool = False,
        auth: Optional[Auth] = None,
        on_round: Optional[Callable[[Dict[str, Any]], None]] = None,
        log: Optional[logging.Logger] = None,
    ) -> None:
        self.tm = tm
        self.root = root
        self.presence = presence
        self.publish = publish
        self.rejections = rejections
        self.on_round = on_round
        self.auth = auth
        self.log = log or logging.getLogger("fedmq.rounds")
        self.topics = tm.topics()
        self.weights: Weights = initial_weights(tm.model)
        self.state = checkpoint.RoundState()
        self.eval_data = load_evaluation(tm)
        if tm.checkpoint_dir and not fresh:
            loaded = checkpoint.load(tm.checkpoint_dir, tm.federation, tm.model)
            if loaded:
                self.weights, self.state = loaded
                self.log.warning(
                    "resuming from checkpoint %s: %d rounds done, model version %d",
                    tm.checkpoint_dir,
                    self.state.rounds_done,
                    self.state.model_version,
                )
        self.scaling = Scaling.from_meta(self.state.scaling, tm.model.features)
        s = tm.strategy
        self.optimizer = make_optimizer(s.server_optimizer, s.server_lr, s.params)
        self.rule = make_rule(s.aggregator, s.params) if s.robust else None
        self.optimizer.restore(self.state.optimizer)
        privacy = tm.strategy.privacy
        self.accountant = Accountant(privacy) if privacy is not None and privacy.noise_multiplier > 0 else None
        if self.accountant is not None:
            for event in self.state.dp_events:  # spent before a restart
                self.accountant.compose(event)
        self.population = 0
        self.attempt_count = 0
        self.starts = 0  # round starts by this process
        self.last_attempt = 0
        self.waiting_since = time.monotonic()
        self.last_wait_log = 0.0
        self.round_started = 0.0
        self.round_started_at = 0.0  # the same, as wall time (the round's progress on _round)
        self.first_start: Optional[float] = None  # when this process started its first round (ETA)
        self.applied_here = 0
        self.selected: List[str] = []
        self.finished = False
        self.bytes_model = 0
        self.model_file = build_model_file(tm, initial_weights(tm.model))  # stable hash across restarts
        if self.rule is not None and self.rule.trusted:  # it trains on the evaluation set: can it here?
            try:
                make_trainer("auto", tm.model, self.model_file[1] if self.model_file else None)
            except TrainerUnavailable as exc:
                raise MissingExtra(f"strategy.aggregator {s.aggregator} trains the model on the evaluation set at "
                                   f"the coordinator: {exc}") from None
        root.attach(self._on_root_close)  # the root group hands every closed round (or buffer) to us

    @property
    def next_round(self) -> int:
        """Number of the round to run next (1-based)."""
        return self.state.rounds_done + 1

    def begin(self) -> None:
        """Publish the model file (if any) and the current global model, both retained; rounds start once
        enough nodes are online."""
        if self.model_file is not None:
            self.publish(self.topics.model_file(self.model_file[0]), self.model_file[1], True)
            self.log.info("model file %s (%d bytes) published", self.model_file[0][:12], len(self.model_file[1]))
        self._publish_model()
        if self.state.rounds_done >= self.tm.policy.rounds:
            self.log.warning("all %d rounds are already done", self.tm.policy.rounds)
            self._finish()

    def _publish_model(self) -> None:
        meta: Dict[str, Any] = {"model": self.tm.model.to_meta(), "update_codec": self.tm.compression.update.to_meta()}
        if self.scaling is not None:
            meta["scaling"] = self.scaling.to_meta()
        if self.model_file is not None:
            meta["file"] = {"sha256": self.model_file[0], "bytes": len(self.model_file[1]), "format": "tflite"}
        if self.tm.transport.max_payload_bytes:
            meta["max_payload_bytes"] = self.tm.transport.max_payload_bytes
        codec = self.tm.compression.model
        tensors = {k: v.astype(np.float16) for k, v in self.weights.items()} if codec == "float16" else self.weights
        self.root.set_model(self.state.model_version, {k: v.astype(np.float64) for k, v in tensors.items()})
        env = Envelope(
            kind=Kind.MODEL,
            federation=self.tm.federation,
            round=self.state.rounds_done,
            sender="coordinator",
            model_version=self.state.model_version,
            tensors=tensors,
            meta=meta,
            codec=codec,
        )
        payload = seal(env, self.auth)
        self.bytes_model = len(payload)
        self.publish(self.topics.model(), payload, True)

    def tick(self, now: float) -> None:
        """Start the next round when no round is open and enough nodes are online."""
        if self.finished or self.root.current is not None:
            return
        online = self.presence.online()
        able = self.presence.ready()
        p = self.tm.policy
        waited = time.monotonic() - self.waiting_since
        everyone = not self.tm.root.has_patterns and len(able) >= len(self.tm.root.named_nodes())
        first = self.starts == 0  # also after a restart: wait for the named nodes, not the first status heard
        ready = len(able) >= p.min_nodes and (everyone or not first or waited >= min(p.wait_for_nodes_s, 10.0))
        if ready:
            self._start(able, "stats" if self._stats_due() else "train")
        elif waited >= p.wait_for_nodes_s and len(able) < p.min_nodes:
            raise FederationFailed(
                f"only {len(able)} of the {p.min_nodes} nodes needed (rounds.min_nodes) came online "
                f"within {p.wait_for_nodes_s:.0f}s (rounds.wait_for_nodes_s)"
                + self._problem_note(online)
                + "; check that the nodes run "
                f"and reach {self.tm.broker.host}:{self.tm.broker.port}"
            )
        elif time.monotonic() - self.last_wait_log > 5:
            self.last_wait_log = time.monotonic()
            named = len(self.tm.root.named_nodes())
            if len(able) >= p.min_nodes:  # enough, but the first round gives every named node a moment
                self.log.warning("waiting for nodes: %d of the %d named nodes ready; the first round starts once "
                                 "all are, or after %.0f s of waiting%s", len(able), named,
                                 min(p.wait_for_nodes_s, 10.0), self._problem_note(online))
            else:
                self.log.warning("waiting for nodes: %d ready, at least %d needed (rounds.min_nodes)%s", len(able),
                                 p.min_nodes, self._problem_note(online))

    def _problem_note(self, online: List[str]) -> str:
        """', N more online with data problems: node (reason), ...' or ''."""
        problems = self.presence.problems()
        if not problems:
            return ""
        shown = "; ".join(f"{n}: {why}" for n, why in list(problems.items())[:3])
        return (
            f"; {len(problems)} of {len(online)} online held back by data problems ({shown}"
            + (" ..." if len(problems) > 3 else "")
            + ")"
        )

    def _stats_due(self) -> bool:
        """True when the next start should gather feature statistics (federated scaling)."""
        policy = self.tm.scaling
        if policy.mode == "none" or self.tm.strategy.mode == "async":
            return False
        if self.scaling is None:
            return policy.mode == "federated" or self.presence.any_live()
        return policy.every_rounds > 0 and self.state.rounds_done - self.state.scaling_round >= policy.every_rounds

    def _start(self, online: List[str], task: str = "train") -> None:
        p = self.tm.policy
        self.starts += 1
        self.attempt_count += 1
        rng = np.random.default_rng([p.seed, self.next_round, self.attempt_count])
        self.selected = select_nodes(online, self.tm, rng)
        self.population = len(online)
        # unique per start, also across coordinator restarts, and increasing within this process
        attempt = self.last_attempt = max(int(time.time() * 1000), self.last_attempt + 1)
        secure = self.tm.strategy.secure
        bounds = self._bounds(online, task)
        ctl = Control(
            type="start",
            round=self.next_round,
            attempt=attempt,
            model_version=self.state.model_version,
            deadline_at=time.time() + p.deadline_s,
            selected=self.selected,
            train=self._train_params(),
            secure=None
            if secure is None
            else {
                "frac_bits": secure.frac_bits,
                "equal_weights": self.tm.strategy.privacy is not None and task == "train",
                **({"max_weight": bounds.weight} if bounds.weight else {}),
            },
            task=task,
            bounds=bounds.to_wire(),
        )
        self.round_started = time.monotonic()  # rejections since the last summary go into the next one
        self.round_started_at = time.time()
        self.first_start = self.first_start or self.round_started
        self.log.info(
            "round %d: %s with %d of %d nodes%s",
            ctl.round,
            "started" if task == "train" else "gathering feature statistics (federated scaling)",
            len(self.selected),
            len(self.presence.online()),
            self._problem_note(self.presence.online()),
        )
        self.root.start(ctl)

    def _bounds(self, online: List[str], task: str) -> update_bounds.Bounds:
        """The weight cap and norm bound of a round starting with these candidates (a calibration round is logged)."""
        b = update_bounds.round_bounds(
            self.tm.strategy, self.presence.reported_samples(online), self.state.norm_bound, stats=task == "stats"
        )
        if update_bounds.calibrating(self.tm.strategy, b, task == "stats"):
            self.log.info(
                "round %d: calibration round: every update goes to the root, which clips them at this "
                "round's median change norm (strategy.clip_norm: auto)",
                self.next_round,
            )
        return b

    def _train_params(self) -> TrainParams:
        p, s = self.tm.policy, self.tm.strategy
        local = s.privacy if s.privacy is not None and s.privacy.mode == "local" else None
        # Under secure aggregation no aggregator sees an update, so nodes clip their own changes.
        clip = local.clip_norm if local else (s.clip if s.secure is not None else None)
        return TrainParams(
            p.local_epochs,
            p.batch_size,
            p.learning_rate,
            proximal_mu=s.proximal_mu,
            dp_clip_norm=clip,
            dp_noise_multiplier=local.noise_multiplier if local else 0.0,
            partial_work=s.partial_work,
        )

    def _change(self, ctl: Control, result: GroupResult) -> Dict[str, np.ndarray]:
        """The round's aggregated change to the global model, by the strategy's rule."""
        s = self.tm.strategy
        delta = self.tm.compression.update.delta  # then updates (and sums) are changes, else weights
        shapes = expected_shapes(self.tm.model)
        reference = None if delta else self.weights
        if result.stack is not None:  # a robust rule, or a calibration round of the adaptive norm bound
            rows, weights = result.stack.arrays()
            rows = rows.astype(np.float64)
            if update_bounds.calibrating(s, update_bounds.Bounds.from_wire(ctl.bounds), False):
                flat_reference = None if delta else flatten(self.weights, shapes).astype(np.float64)
                rows = update_bounds.clip_rows(rows, flat_reference, result.norms)
            flat = None  # the weighted mean of the rows
            if self.rule is not None and self.rule.trusted:  # scored against the coordinator's own change
                flat_reference = None if delta else flatten(self.weights, shapes).astype(np.float64)
                changes = rows if flat_reference is None else rows - flat_reference
                change = self.rule.aggregate_trusted(changes, self._trusted_change(ctl))
                flat = change if flat_reference is None else change + flat_reference
            elif self.rule is not None:  # on the means of shuffled buckets when bucket_size > 1
                rng = np.random.default_rng([self.tm.policy.seed, ctl.round, 7])
                flat = self.rule.aggregate(*buckets(rows, weights, s.bucket_size, rng))
            return result.stack.change(rows, weights, reference, flat)
        return result.sums.finish(reference)  # under DP the private mean: noised, over the number selected

    def _trusted_change(self, ctl: Control) -> np.ndarray:
        """The global model trained on the evaluation set with the round's settings (FLTrust's root of trust)."""
        assert self.eval_data is not None and ctl.train is not None
        x, y = self.eval_data
        train = replace(ctl.train, dp_clip_norm=None, dp_noise_multiplier=0.0, partial_work=False)
        return trusted_change(self.tm.model, self.weights, self.scaling.apply(x) if self.scaling else x, y, train,
                              seed=self.tm.policy.seed * 100_003 + ctl.round,
                              model_file=self.model_file[1] if self.model_file else None)

    def _on_root_close(self, ctl: Control, result: GroupResult) -> None:
        p = self.tm.policy
        needed = p.quorum_count(len(ctl.selected))
        if len(result.nodes) >= needed and result.sums.weight > 0 and ctl.task == "stats":
            self.attempt_count = 0
            self._apply_scaling(ctl, result)
        elif len(result.nodes) >= needed and result.sums.weight > 0:
            try:
                change = self._change(ctl, result)
            except RobustError as exc:
                raise FederationFailed(
                    f"round {ctl.round}: {exc}; lower the rule's parameters (strategy."
                    "byzantine, trim_fraction, ...) or raise rounds.quorum"
                ) from None
            summary = self._summary(result)
            summary["selected"] = len(ctl.selected)
            if ctl.bounds:
                summary["bounds"] = ctl.bounds
            self._apply(change, summary, ctl, result.norms)
        else:
            self._not_applied(
                ctl,
                f"{len(result.nodes)} of {len(ctl.selected)} selected nodes answered, quorum is {needed}",
                f"quorum not met ({len(result.nodes)} of {needed} needed)",
            )
        self.waiting_since = time.monotonic()

    def _not_applied(self, ctl: Control, why: str, failure: str) -> None:
        """Close an attempt without applying it: retry as the policy allows, else stop the federation."""
        p = self.tm.policy
        retry = p.on_quorum_failure == "retry" and self.attempt_count <= p.max_retries
        self.log.warning("round %d: %s: %s", ctl.round, why, "retrying" if retry else "giving up")
        self.publish(
            self.topics.control(()),
            Control(
                type="close", round=ctl.round, attempt=ctl.attempt, outcome="retry" if retry else "failed"
            ).encode(),
            True,
        )
        if not retry:
            raise FederationFailed(
                f"round {ctl.round}: {failure} after {self.attempt_count} attempt(s); raise rounds.deadline_s or "
                "lower rounds.quorum, or set rounds.on_quorum_failure: retry"
            )

    def _save(self) -> None:
        """Checkpoint the state as it is now; CheckpointFailed (exit 2) if it cannot be written."""
        if self.tm.checkpoint_dir:
            try:
                checkpoint.save(self.tm.checkpoint_dir, self.tm.federation, self.tm.model, self.weights, self.state)
            except checkpoint.CheckpointError as exc:
                raise CheckpointFailed(
                    f"{exc}; stopped before announcing round {self.state.rounds_done} (it runs again after a restart)"
                ) from None

    def _apply_scaling(self, ctl: Control, result: GroupResult) -> None:
        """A statistics round closed: make the federation's scaling, fold it into the model if rounds were
        already trained under another one, checkpoint, and publish the model with it."""
        try:
            new = Scaling.from_means(
                result.sums.finish(None), result.sums.weight
            )
            Scaling.from_meta(new.to_meta(), self.tm.model.features)  # finite, positive: checked as nodes check it
        except ValueError as exc:
            self._not_applied(ctl, f"the feature statistics are unusable ({exc})", "no usable feature statistics")
            return
        if self.state.rounds_done > 0:  # the same function of the raw features under the new scaling
            layers = rescale_first_layer(self.tm.model, to_layers(self.tm.model, self.weights), self.scaling, new)
            self.weights = from_layers(self.tm.model, layers)
            self.state.model_version += 1
        self.scaling = new
        self.state.scaling, self.state.scaling_round = new.to_meta(), self.state.rounds_done
        self.log.info(
            "round %d: feature scaling from %d nodes, %d samples", ctl.round, len(result.nodes), int(result.sums.weight)
        )
        self._save()
        self.publish(
            self.topics.control(()),
            Control(type="close", round=ctl.round, attempt=ctl.attempt, outcome="applied").encode(),
            True,
        )
        self._publish_model()

    def _apply(
        self,
        change: Dict[str, np.ndarray],
        summary: Dict[str, Any],
        ctl: Optional[Control] = None,
        norms: Sequence[float] = (),
    ) -> None:
        """Step the global model by ``change`` (through the server optimizer) and evaluate it; only then
        count the round, checkpoint (stopping if that fails), announce it, publish the new model and the
        summary; finish after the last round. ``norms`` (the updates' change norms) set the next adaptive
        bound. A model that is not finite is never applied."""
        before = {k: v.copy() for k, v in self.optimizer.moments().items()}
        weights = self.optimizer.step(self.weights, change)
        if not all(np.isfinite(w).all() for w in weights.values()):
            self.optimizer.restore(before)
            if ctl is None:  # async: drop this buffer, keep the model
                self.log.error("round %d: the aggregate is not finite; dropped", summary["round"])
                return
            self._not_applied(
                ctl, "the aggregate is not finite (updates of huge values); nothing applied", "no finite aggregate"
            )
            return
        summary = self._evaluated(summary, weights, self.state.model_version + 1)
        if self.accountant is not None and ctl is not None:
            event = self.accountant.event(self.population, len(ctl.selected))
            self.state.dp_events.append(event)
            summary["epsilon"] = round(self.accountant.compose(event), 4)
            summary["delta"] = self.accountant.privacy.delta
        self.weights = weights
        self.state.optimizer = self.optimizer.moments()
        if self.tm.strategy.clip_auto and norms:
            self.state.norm_bound = update_bounds.next_norm_bound(norms)
        self.state.rounds_done += 1
        self.state.model_version += 1
        self.state.history.append(summary)
        self._save()
        self.attempt_count = 0
        if ctl is not None:
            self.publish(
                self.topics.control(()),
                Control(type="close", round=ctl.round, attempt=ctl.attempt, outcome="applied").encode(),
                True,
            )
        self._publish_model()
        self.publish(self.topics.metrics(), encode_metrics(summary), True)
        self.publish(self.topics.history(), encode_history(history_rows(self.state.history)), True)
        if self.on_round:
            self.on_round(summary)
        if self.state.rounds_done >= self.tm.policy.rounds:
            self._finish()

    def _rejected(self, sums: Dict[str, float]) -> Dict[str, int]:
        """What this process refused since the last summary, and what the child groups' processes did (their
        partials carry it as ``rejected:<reason>`` metrics)."""
        out = self.rejections.take_round()
        forwarded = [(k[len(REJECTED):], n) for k, n in sums.items() if k.startswith(REJECTED)]
        for reason, n in forwarded[:MAX_FORWARDED_REASONS]:  # a child's word: bounded, finite, whole
            if 0 < len(reason) <= 64 and math.isfinite(n) and 0 < n < 1e12:
                out[reason] = out.get(reason, 0) + int(n)
        return out

    def _summary(self, result: GroupResult) -> Dict[str, Any]:
        """The figures of one aggregation that do not depend on how it was triggered."""
        node = result.metrics.means()
        sums = result.metrics.sums
        count = max(1, len(result.nodes))
        return {
            "round": self.state.rounds_done + 1,
            "updates": len(result.nodes),
            "node_loss": node.get("eval_loss"),
            "node_accuracy": node.get("eval_accuracy"),
            "train_loss": node.get("train_loss"),
            "bytes_up": int(result.bytes_up),
            "bytes_down": int(sums.get("bytes_down", 0.0)),
            "bytes_per_update": round(sums.get("bytes_update", 0.0) / count),
            "tensor_bytes_per_update": round(sums.get("bytes_update_tensors", 0.0) / count),
            "seconds": round(time.monotonic() - self.round_started, 4),
            "rejected": self._rejected(sums),
            "clipped": int(sums.get("clipped", 0.0)),
            "capped": int(sums.get("capped", 0.0)),
            "problems": dict(list(self.presence.problems().items())[:MAX_PROBLEMS_SHOWN]) or None,
            "timestamp": round(time.time(), 3),
            "rounds_total": self.tm.policy.rounds,
        }

    def _evaluated(self, summary: Dict[str, Any], weights: Weights, version: int) -> Dict[str, Any]:
        """``summary`` with the new model version and its loss and accuracy (held-out data at the root if
        the topic map names some, else the nodes' own evaluation before training); unset figures dropped.
        A failure here stops the federation before the round counts (FederationFailed)."""
        summary["model_version"] = version
        if self.eval_data is not None:
            x, y = self.eval_data
            try:
                server = evaluate(self.tm.model, weights, self.scaling.apply(x) if self.scaling else x, y)
            except (ValueError, FloatingPointError) as exc:
                raise FederationFailed(
                    f"round {summary['round']}: evaluating the new model on "
                    f"{self.tm.evaluation.path if self.tm.evaluation else 'the evaluation set'} "
                    f"failed ({exc}); nothing was applied"
                ) from None
            summary["loss"] = server["loss"]
            summary["accuracy"] = server.get("accuracy", server.get("r2"))
            summary["accuracy_source"] = "held_out"
        else:
            summary["loss"] = summary["node_loss"]
            summary["accuracy"] = summary["node_accuracy"]
            summary["accuracy_source"] = "node_training_data"  # the nodes' own data, before they trained
        summary["eta_s"] = self._eta(summary["round"])
        self.log.info(
            "round %d applied: %d updates, accuracy %s", summary["round"], summary["updates"], summary["accuracy"]
        )
        return {k: v for k, v in summary.items() if v is not None}

    def _eta(self, round_: int) -> Optional[float]:
        """Seconds until the last round, at the pace of the rounds this process applied so far."""
        self.applied_here += 1
        if self.first_start is None:
            return None
        pace = (time.monotonic() - self.first_start) / self.applied_here
        return round(max(0, self.tm.policy.rounds - round_) * pace, 1)

    def _finish(self) -> None:
        self.finished = True
        self.publish(self.topics.control(()), Control(type="done", round=self.state.rounds_done).encode(), True)
