"""The serving loop: every ``period_s`` the node predicts on its live feature window with the newest global
(or personalised) model and publishes the result, retained, on ``<serve.topic>/state`` of the home broker.

Data path: a model accepted by the agent -> ``offer`` -> (serving thread) personalise and score it on the
node's recent samples -> ``_serve_once`` each period: source.current() -> predictor -> state JSON.
When the model is older than ``max_model_age_s``, or an input is missing or stale, the state carries no
value and says why (``problem``). ``<serve.topic>/availability`` is ``online`` while the node runs and
``offline`` otherwise (the MQTT last will), and Home Assistant discovery configs are published at start,
whenever the served model's kind changes, and whenever Home Assistant says ``online`` on its status topic.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Set, cast

import paho.mqtt.client as mqtt

from fedmq.node.serve import discovery, ha_rules
from fedmq.node.serve.config import Personalise, ServeConfig
from fedmq.node.serve.personalise import DEFAULT_LR, LocalCache, personalise, score
from fedmq.node.serve.predictors import Predictor, make_predictor
from fedmq.node.trainers import TrainerUnavailable
from fedmq.shared.data import DataError
from fedmq.shared.datacheck import normalise_labels
from fedmq.shared.mqtt import new_client
from fedmq.shared.saved_model import SavedModel

RESCORE_S = 3600.0  # how often the served model is scored (and personalised) again on the recent data
RETRY_S = 5.0  # ... while it has no score yet (no data yet)
REMOVAL_PAUSE_S = 1.0  # between removing a moved entity's old config and announcing it under the new device id
MAX_QUEUED = 100  # messages kept while the home broker is away (the newest state is retained anyway)
IN_FLIGHT_WAIT_S = 0.05  # a state held back behind one in flight goes out this soon


def iso(t: Optional[float]) -> Optional[str]:
    """Unix time as ISO 8601 UTC (``2026-11-28T07:30:00Z``)."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Prepared:
    """A model ready to serve: what serves, the global model it came from, its predictor and local scores."""

    served: SavedModel
    offered: SavedModel
    predictor: Predictor
    scores: Dict[str, float]


class Server:
    """Publishes one node's predictions (and Home Assistant discovery) on the home broker."""

    def __init__(self, node_id: str, federation: str, serve: ServeConfig, source: Any, log: logging.Logger, *,
                 model_file: Callable[[SavedModel], Optional[bytes]] = lambda m: None, seed: int = 0) -> None:
        self.node_id, self.federation, self.cfg, self.source, self.log = node_id, federation, serve, source, log
        self.model_file = model_file
        self.seed = seed
        self.state_topic = f"{serve.topic}/state"
        self.availability_topic = f"{serve.topic}/availability"
        self.sync_topic = f"{serve.topic}/sync"  # our own echo: the retained discovery configs came before it
        self._synced = threading.Event()
        self._announce_due = threading.Event()
        self._in_flight: Optional[mqtt.MQTTMessageInfo] = None  # the last state published
        self._offered: Optional[SavedModel] = None
        self._prepared: Optional[Prepared] = None  # made on the preparing thread, installed by the serving one
        self._preparing: Optional[threading.Thread] = None
        self._local_models = LocalCache(RESCORE_S)  # the home's own models, used again for an hour
        self._lock = threading.Lock()
        self._announcing = threading.Lock()  # announce runs on the serving thread and on MQTT's
        self.model: Optional[SavedModel] = None  # the one served (personalised or global)
        self.received: Optional[SavedModel] = None  # the global model it came from
        self.predictor: Optional[Predictor] = None
        self.scores: Dict[str, float] = {}
        self._scored_at = -float("inf")
        self.learning_rate = DEFAULT_LR  # the federation's, once the node has trained a round (personalisation)
        self.last_state: Dict[str, Any] = {}
        self.announced: Set[str] = set()
        self.seen_configs: Set[str] = set()  # retained configs of ours found on the broker
        self.said: Set[str] = set()  # configuration problems already logged
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        c = new_client(f"fedmq-serve-{node_id}", serve.broker, "serve.broker", max_queued=MAX_QUEUED, max_delay_s=30)
        c.will_set(self.availability_topic, "offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c

    # --- life cycle ------------------------------------------------------------------------------

    def offer(self, model: SavedModel) -> None:
        """A newly accepted global model (any thread); it serves from the next period on."""
        with self._lock:
            self._offered = model
        self._wake.set()

    def start(self) -> None:
        """Connect to the home broker and start the serving thread."""
        b = self.cfg.broker
        self.client.connect_async(b.host, b.port, keepalive=b.keepalive_s)
        self.client.loop_start()
        if hasattr(self.source, "row_listeners"):  # a prediction for every row, on the data's own clock
            self.source.row_listeners.append(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="fedmq-serve", daemon=True)
        self._thread.start()
        self.log.info("serving predictions on %s:%d %s every %gs", b.host, b.port, self.state_topic, self.cfg.period_s)

    def stop(self) -> None:
        """Serve the newest model once more, say ``offline`` and disconnect."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        info = self.client.publish(self.availability_topic, "offline", qos=1, retain=True)
        try:
            info.wait_for_publish(5)
        except (RuntimeError, ValueError):  # not connected: the last will says offline instead
            pass
        self.client.disconnect()
        self.client.loop_stop()

    def _run(self) -> None:
        while True:
            last = self._stop.is_set()  # after stop, one more period: the newest model offered is served
            sent = True
            try:
                self._take_offered(wait=last)
                if self._announce_due.is_set():
                    self._announce_due.clear()
                    self.announce()
                sent = self._serve_once()
            except Exception:  # one bad period must not end serving
                self.log.exception("serving: error while predicting")
            if last and sent:
                return
            self._wake.wait(self.cfg.period_s if sent else IN_FLIGHT_WAIT_S)
            self._wake.clear()

    # --- the model -------------------------------------------------------------------------------

    def _take_offered(self, wait: bool = False) -> None:
        """Install a model prepared in the background, and start preparing the newest offered one, or the
        current one again when its local scores are due (the first data after a restart, then every
        ``RESCORE_S``: personalisation follows the home's recent data). Personalising takes seconds to
        minutes on a gateway: the current model serves meanwhile. Before the first model, and with ``wait``
        (the last period before stopping), it is prepared here and now."""
        if wait and self._preparing is not None:
            self._preparing.join()
        with self._lock:
            ready, self._prepared = self._prepared, None
        if ready is not None:
            self._install(ready)
        if self._preparing is not None and self._preparing.is_alive():
            return  # the newest offered model waits for it
        with self._lock:
            offered, self._offered = self._offered, None
        due = time.monotonic() - self._scored_at >= (RESCORE_S if self.scores else RETRY_S)
        model = offered if offered is not None else self.received if due else None
        if model is None:
            return
        self._scored_at = time.monotonic()
        if self.model is None or wait:
            self._install(self._prepare(model))
            return
        self._preparing = threading.Thread(target=self._prepare_aside, args=(model,), name="fedmq-personalise",
                                           daemon=True)
        self._preparing.start()

    def _prepare_aside(self, offered: SavedModel) -> None:
        try:
            ready = self._prepare(offered)
        except Exception:  # the federation's model serves as it came, not personalised
            self.log.exception("serving: model %d could not be personalised; serving it as it came",
                               offered.model_version)
            ready = Prepared(offered, offered, offered.predict, {})
        with self._lock:
            self._prepared = ready
        self._wake.set()

    def _prepare(self, offered: SavedModel) -> "Prepared":
        """The model to serve for ``offered`` (personalised where configured), its predictor and scores."""
        served, scores = offered, cast(Dict[str, float], {})
        try:
            x, y = self.source.load()
            if self.cfg.personalise is not None and len(x):
                served, scores = personalise(offered, x, normalise_labels(offered.spec, y, self.source.label_names),
                                             self.cfg.personalise, self.seed, self.learning_rate, self.source.period_s,
                                             self._local_models)
            elif len(x):
                n = Personalise.recent_samples
                scores = {"global": score(offered, offered.weights, x[-n:],
                                          normalise_labels(offered.spec, y[-n:], self.source.label_names))}
        except (DataError, ValueError) as exc:
            self.log.warning("serving: model %d not scored on local data: %s", offered.model_version, exc)
        try:
            predictor = make_predictor(self.cfg.runtime, served, self.model_file(offered))
        except TrainerUnavailable as exc:
            self.log.error("serving: %s; serving with numpy instead", exc)
            predictor = served.predict
        return Prepared(served, offered, predictor, scores)

    def _install(self, ready: "Prepared") -> None:
        served, offered, scores = ready.served, ready.offered, ready.scores
        kind_changed = self.model is None or self.model.spec != served.spec
        self.model, self.received, self.predictor, self.scores = served, offered, ready.predictor, scores
        if "served" in scores:
            self.log.info("serving model %d, %s (held-out local scores: %s)", offered.model_version,
                          ("global", "personalised", "local-only")[int(scores["choice"])],
                          ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k not in ("choice", "served")))
        else:
            self.log.debug("serving model %d", offered.model_version)
        if kind_changed and self.client.is_connected():
            self.announce()

    # --- predictions -----------------------------------------------------------------------------

    def _serve_once(self) -> bool:
        """Publish the state now; False when the previous one is still on its way (it is sent soon instead)."""
        state = self.state()
        self.last_state = state
        if self._state_in_flight():
            return False  # rows come faster than the broker takes states: the newest goes out shortly
        self._in_flight = self.client.publish(self.state_topic, json.dumps(state), qos=1, retain=True)
        return True

    def _state_in_flight(self) -> bool:
        """Whether the last state published is still on its way to a connected broker (one that failed, or was
        queued while the broker was away, is not waited for)."""
        if self._in_flight is None or not self.client.is_connected():
            return False
        try:
            return not self._in_flight.is_published()
        except (RuntimeError, ValueError):  # paho: the publish failed (not connected at the time)
            return False

    def state(self) -> Dict[str, Any]:
        """The state JSON: the prediction, or ``value: null`` and the ``problem``; and the model's health."""
        model, now = self.model, time.time()
        # every key a discovery config reads is always there (null when unknown): no template warnings
        out: Dict[str, Any] = {"value": None, "problem": None, "timestamp": iso(now), "model_version": None,
                               "round": None, "model_received": None, "personalised": False,
                               "local_accuracy": None, "local_rmse": None, "stream": self._stream_counts()}
        if model is not None:
            accuracy = "local_accuracy" if model.spec.is_classifier else "local_rmse"
            out.update(model_version=model.model_version, round=model.round, model_received=iso(model.saved_at),
                       personalised=model is not self.received,
                       **{accuracy: self.scores.get("served", self.scores.get("global"))})
        try:
            out["samples"] = self.source.rows_stored()
        except DataError:
            out["samples"] = None
        if model is None or self.predictor is None:
            out["problem"] = "no model yet: waiting for the federation's first global model"
            return out
        age = now - model.saved_at
        if age > self.cfg.max_model_age_s:
            out["problem"] = (f"the model is {age / 3600:.1f} h old (serve.max_model_age_s allows "
                              f"{self.cfg.max_model_age_s / 3600:.1f} h): waiting for a newer one")
            return out
        try:
            x, row_t = self.source.current()
        except DataError as exc:
            out["problem"] = f"inputs: {exc}"
            return out
        stream_now = self.source.now() or now
        stale = stream_now - (row_t + self.source.period_s)
        out["input_time"] = iso(row_t)
        if stale > self.cfg.max_input_age_s:
            out["problem"] = (f"inputs are stale: the newest complete row ended {stale:.0f} s ago "
                              f"(serve.max_input_age_s allows {self.cfg.max_input_age_s:g} s)")
            return out
        pred = self.predictor(x.reshape(1, -1))
        value = pred.values[0]
        out["value"] = value.item() if hasattr(value, "item") else value
        if pred.probabilities is not None and pred.confidence is not None:
            out["confidence"] = round(float(pred.confidence[0]), 4)
            out["probabilities"] = {str(c): round(float(p), 4) for c, p in zip(model.spec.classes,
                                                                               pred.probabilities[0])}
        return out

    def _stream_counts(self) -> Dict[str, Any]:
        """What the live stream dropped, and the rows kept unlabelled, since the node started."""
        c = self.source.counters()
        return {"dropped_rows": int(c.get("dropped_rows", 0)), "unlabelled_rows": int(c.get("unlabelled_rows", 0)),
                "dropped_readings": dict(c.get("dropped", {}))}

    # --- the home broker and Home Assistant ------------------------------------------------------

    def announce(self) -> None:
        """Publish this node's discovery configs (retained), and empty ones for entities it no longer has;
        before the first model, its diagnostics (they say it waits for one)."""
        ha = self.cfg.homeassistant
        if ha is None or not self._synced.is_set():  # announced once the broker's retained configs are in
            return
        with self._announcing:
            self._announce(ha, self.model)

    def _announce(self, ha: Any, model: Optional[SavedModel]) -> None:
        spec = model.spec if model is not None else None
        for problem in ha_rules.problems(ha.device_class, ha.unit, spec):
            if problem not in self.said:
                self.said.add(problem)
                self.log.error("Home Assistant: serve.homeassistant: %s (announced without it)", problem)
        current = discovery.configs(ha, self.node_id, self.federation, spec, self.state_topic,
                                    self.availability_topic)
        gone = (self.announced | self.seen_configs) - set(current)
        for topic in gone:  # first: Home Assistant refuses a new config whose unique id an old one still holds
            self.client.publish(topic, b"", qos=1, retain=True)
            self.log.info("Home Assistant: removed the entity of %s", topic)
        if gone & self.seen_configs and set(current) - self.announced:
            time.sleep(REMOVAL_PAUSE_S)  # an entity moves to another device id: let Home Assistant drop the old
        for topic, payload in current.items():
            self.client.publish(topic, json.dumps(payload), qos=1, retain=True)
        self.announced = set(current)
        self.seen_configs.clear()
        if self.last_state:  # Home Assistant subscribes to the state once the entity exists: send it again
            self.client.publish(self.state_topic, json.dumps(self.last_state), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        if getattr(reason, "is_failure", False):
            self.log.error("serving: the home broker %s:%d refused the connection: %s", self.cfg.broker.host,
                           self.cfg.broker.port, reason)
            return
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        ha = self.cfg.homeassistant
        self._synced.clear()
        if ha is not None:
            # every device id: a config announced under the gateway's earlier device_id is found and removed;
            # the sync message comes back after the broker's retained configs, and the announcement follows it
            client.subscribe([(f"{ha.discovery_prefix}/status", 1), (f"{ha.discovery_prefix}/+/+/+/config", 1),
                              (self.sync_topic, 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: Any, props: object) -> None:
        client.publish(self.sync_topic, b"sync", qos=1)  # delivered to us after the retained configs

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ha = self.cfg.homeassistant
        if ha is None:
            return
        if msg.topic == self.sync_topic:
            self._synced.set()
            self._announce_soon()
            return
        if msg.topic == f"{ha.discovery_prefix}/status":
            if msg.payload == b"online":
                self.log.info("Home Assistant is online: announcing the entities again")
                self._announce_soon()
            return
        if msg.payload and msg.retain and msg.topic not in self.announced \
                and discovery.owned(ha, self.node_id, self.federation, msg.topic, bytes(msg.payload)):
            with self._announcing:  # not between an announcement's read and its clearing of seen_configs
                self.seen_configs.add(msg.topic)  # a config of an earlier run: removed unless it is current
            self._announce_soon()  # (before the sync nothing: the announcement that follows it removes them first)

    def _announce_soon(self) -> None:
        """Have the serving thread announce (it may pause; the MQTT thread must not)."""
        self._announce_due.set()
        self._wake.set()
