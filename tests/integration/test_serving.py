"""Serving on a real Mosquitto: a gateway process predicts from its saved model with no coordinator, announces
itself to Home Assistant, follows Home Assistant's restarts, and stops serving (saying why) when its model
is too old or an input goes missing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from fedhelp import FED, fedmq, stop, wait_for
from fedmq.coordinator.sim.homes import CLOCK_TOPIC, Simulation
from fedmq.coordinator.sim.publish import Publisher
from fedmq.coordinator.sim.scenario import node_config, write_yaml
from fedmq.node.agent import global_model_path
from fedmq.shared.models import initial_weights
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.saved_model import SavedModel, read_model
from fedmq.shared.topicmap import ModelSpec
from fedmq.shared.topicmap.model import BrokerSettings

SPEC = ModelSpec(kind="softmax_regression", features=13, classes=(0, 1))
PREFIX = "homeassistant"
DEVICE = "home1_gateway"


class Watcher:
    """Every message on the serving and discovery topics, newest per topic."""

    def __init__(self, port: int) -> None:
        self.link = MqttLink(f"serving-watch-{os.getpid()}-{time.monotonic_ns()}", BrokerSettings(port=port),
                             persistent=False)
        self.link.subscribe("fedmq/home1/#")
        self.link.subscribe(f"{PREFIX}/#")
        self.link.start()
        self.last: dict = {}
        self.count: dict = {}
        self.states: list = []

    def pump(self) -> None:
        msg = self.link.get(timeout=0.05)
        while msg is not None:
            self.last[msg.topic] = msg.payload
            self.count[msg.topic] = self.count.get(msg.topic, 0) + 1
            if msg.topic.endswith("/state"):
                self.states.append(json.loads(msg.payload))
            msg = self.link.get(timeout=0)

    def until(self, predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
        found = []

        def check() -> bool:
            self.pump()
            value = predicate()
            if value:
                found.append(value)
            return bool(value)

        wait_for(check, timeout, what)
        return found[0]

    def state(self) -> dict:
        raw = self.last.get("fedmq/home1/occupancy/state")
        return json.loads(raw) if raw else {}

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.link.publish(topic, payload, retain=retain)

    def stop(self) -> None:
        self.link.stop()


def _gateway(tmp_path, port: int, serve: dict, *, saved_at: float = 0.0, version: int = 7):
    """A simulated home's gateway config with a saved global model in its cache (no coordinator anywhere)."""
    sim = Simulation(1, 0, 300.0)
    home = sim.homes[0]
    serve = {"topic": "fedmq/home1/occupancy", "period_s": 0.2,
             "homeassistant": {"device_id": DEVICE, "name": "Occupancy", "device_class": "occupancy"}, **serve}
    cfg = node_config(home, FED, BrokerSettings(port=port), 300.0, store=str(tmp_path / "home1.sqlite"),
                      extra={"cache_dir": str(tmp_path / "cache"), "trainer": "numpy", "serve": serve})
    path = str(tmp_path / "home1.yaml")
    write_yaml(path, cfg)
    rng = np.random.default_rng(0)
    weights = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in initial_weights(SPEC).items()}
    SavedModel(SPEC, weights, None, FED, version, version, saved_at=saved_at or time.time()).save(
        _saved_copy(tmp_path))
    return sim, path


def _saved_copy(tmp_path) -> str:
    """Where the gateway of ``_gateway`` keeps its global model."""
    return global_model_path(str(tmp_path / "cache"), "home1-gw")


def _publish(port: int, messages) -> None:
    with Publisher(BrokerSettings(port=port)) as pub:
        pub.publish(messages)


def test_a_gateway_serves_its_saved_model_with_no_coordinator_and_announces_it_to_home_assistant(local_broker,
                                                                                                tmp_path):
    port = local_broker.port
    w = Watcher(port)
    stale = f"{PREFIX}/sensor/{DEVICE}/home1-gw_local_rmse/config"  # announced when the model was a regressor
    w.publish(stale, json.dumps({"name": "old", "state_topic": "x", "unique_id": f"fedmq_{FED}_home1-gw_local_rmse"}
                                ).encode(), retain=True)
    # announced before serve.homeassistant.device_id changed: the same unique id, which Home Assistant would
    # refuse to take twice
    moved = f"{PREFIX}/sensor/old_gateway/home1-gw_samples/config"
    w.publish(moved, json.dumps({"name": "old", "state_topic": "x", "unique_id": f"fedmq_{FED}_home1-gw_samples"}
                                ).encode(), retain=True)
    foreign = f"{PREFIX}/sensor/old_gateway/home1-gw_samples_x/config"  # someone else's: left alone
    w.publish(foreign, json.dumps({"name": "x", "state_topic": "x", "unique_id": "zigbee2mqtt_x"}).encode(),
              retain=True)
    w.until(lambda: w.last.get(stale) and w.last.get(moved) and w.last.get(foreign), 10, "the old configs retained")
    sim, path = _gateway(tmp_path, port, {})
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that has ended: its half-written save is what a power cut leaves
    left = Path(_saved_copy(tmp_path) + f".tmp.{gone.pid}")
    left.write_bytes(b"half a model")
    node = fedmq(["-v", "node", "run", path], str(tmp_path / "node.log"))
    try:
        w.until(lambda: w.state().get("problem", "").startswith("inputs:"), 30,
                "a first state: the model is there, the inputs are not")
        assert not left.exists()
        assert w.state()["value"] is None and w.state()["model_version"] == 7
        _publish(port, list(sim.run(86400)))
        state = w.until(lambda: w.state() if w.state().get("value") is not None and w.state()["samples"] > 200
                        else None, 30, "a prediction on the day's rows")
        assert state["value"] in (0, 1) and state["problem"] is None
        assert state["model_version"] == 7 and state["round"] == 7 and state["personalised"] is False
        assert set(state["probabilities"]) == {"0", "1"} and 0.5 <= state["confidence"] <= 1.0
        assert abs(sum(state["probabilities"].values()) - 1.0) < 1e-3
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", state["timestamp"])
        assert state["input_time"].startswith("2026-01-") and state["samples"] > 200
        state = w.until(lambda: w.state() if w.state().get("local_accuracy") is not None else None, 30,
                        "the model scored on the gateway's own data")
        assert 0.0 <= state["local_accuracy"] <= 1.0
        assert w.last["fedmq/home1/occupancy/availability"] == b"online"

        # discovery: one device, six entities with unique ids, availability bound to the node
        configs = w.until(lambda: (lambda c: c if len(c) == 6 else None)(
            {t: json.loads(p) for t, p in w.last.items() if t.startswith(PREFIX + "/") and p and t not in (
                stale, moved, foreign)}),
            10, "six discovery configs: " + str(sorted(t for t in w.last if t.startswith(PREFIX))))
        def retained_now() -> dict:  # what the broker retains: a new subscriber's view
            fresh = Watcher(port)
            try:
                fresh.until(lambda: sum(t.startswith(PREFIX + "/") for t in fresh.last) >= 6, 10,
                            "the retained configs")
                time.sleep(0.3)
                fresh.pump()
                return fresh.last
            finally:
                fresh.stop()

        wait_for(lambda: stale not in retained_now(), 20, "the entity the configuration no longer has to be removed")
        wait_for(lambda: moved not in retained_now(), 20, "the entity announced under the old device id removed")
        assert foreign in retained_now()
        by_id = {c["object_id"]: (t, c) for t, c in configs.items()}
        assert set(by_id) == {
            f"home1-gw_{e}"
            for e in ("prediction", "model_version", "last_round", "local_accuracy", "samples", "data_problem")
        }
        topic, pred = by_id["home1-gw_prediction"]
        assert topic == f"{PREFIX}/binary_sensor/{DEVICE}/home1-gw_prediction/config"
        assert pred["device_class"] == "occupancy" and pred["state_topic"] == "fedmq/home1/occupancy/state"
        assert pred["value_template"] == "{{ 'ON' if value_json.value == 1 else 'OFF' }}"
        assert pred["availability_mode"] == "all" and len(pred["availability"]) == 2
        assert pred["availability"][0]["topic"] == "fedmq/home1/occupancy/availability"
        assert len({c["unique_id"] for c in configs.values()}) == 6
        for t, c in configs.items():
            assert c["device"]["identifiers"] == [f"fedmq_{DEVICE}"] and c["device"]["name"]
            assert c["device"]["sw_version"] and c["device"]["model"] == "fedmq gateway"
            if c["object_id"] != "home1-gw_prediction":
                assert c["entity_category"] == "diagnostic" and len(c["availability"]) == 1
                assert c["name"].startswith("Occupancy ")  # apart from another node's on the same gateway
        # every key a config's templates read is in every state (Home Assistant warns of a missing one)
        read = {k for c in configs.values() for k in re.findall(r"value_json\.(\w+)", json.dumps(c))} - {"get"}
        assert all(read <= set(s) for s in w.states), read - set(w.states[0])

        # Home Assistant restarted: its birth message (not retained) makes the node announce every entity again
        before = {t: w.count[t] for t in configs}
        w.publish(f"{PREFIX}/status", b"online")
        w.until(lambda: all(w.count[t] > n for t, n in before.items()), 10, "the configs announced again on 'online'")

        # SIGKILL: the last will says offline
        node.send_signal(signal.SIGKILL)
        node.wait(10)
        w.until(lambda: w.last.get("fedmq/home1/occupancy/availability") == b"offline", 20, "the last will")
    finally:
        stop([node])
        w.stop()


def test_serving_stops_and_says_why_when_the_model_is_too_old_or_an_input_goes_missing(local_broker, tmp_path):
    port = local_broker.port
    w = Watcher(port)
    sim, path = _gateway(tmp_path, port, {"max_model_age_s": 3600}, saved_at=time.time() - 7200)
    node = fedmq(["-v", "node", "run", path], str(tmp_path / "node.log"))
    try:
        _publish(port, list(sim.run(86400)))
        state = w.until(
            lambda: w.state() if "old" in (w.state().get("problem") or "") else None,
            30,
            "the too old model to be refused",
        )
        assert state["value"] is None and "2.0 h old" in state["problem"] and "max_model_age_s" in state["problem"]
        stop([node])
        # a newer model arrives (here: saved, as the node does when one arrives); the motion sensor then goes quiet
        sim2, path = _gateway(tmp_path, port, {"max_model_age_s": 3600}, version=8)
        node = fedmq(["-v", "node", "run", path], str(tmp_path / "node2.log"))
        _publish(port, list(sim.run(3600)))
        w.until(
            lambda: w.state().get("model_version") == 8 and w.state().get("value") is not None,
            30,
            "predictions with the new model",
        )
        _publish(port, [m for m in sim.run(2 * 3600) if "motion" not in m[1]])
        state = w.until(
            lambda: w.state() if "motion" in (w.state().get("problem") or "") else None,
            30,
            "the missing input to be named",
        )
        assert state["value"] is None and state["problem"].startswith("inputs: no recent reading of motion")
        _publish(port, list(sim.run(3 * 3600)))
        w.until(lambda: w.state().get("value") is not None, 30, "serving again once the input is back")
        assert read_model(_saved_copy(tmp_path)).model_version == 8
    finally:
        stop([node])
        w.stop()


def test_a_new_gateway_shows_in_home_assistant_before_its_first_model(local_broker, tmp_path):
    """No global model yet: the gateway announces its diagnostics, whose data problem says it waits for the
    first model, and its state carries every key the templates read."""
    w = Watcher(local_broker.port)
    sim, path = _gateway(tmp_path, local_broker.port, {})
    os.unlink(_saved_copy(tmp_path))
    node = fedmq(["node", "run", path], str(tmp_path / "node.log"))
    try:
        problem = f"{PREFIX}/sensor/{DEVICE}/home1-gw_data_problem/config"
        config = w.until(lambda: w.last.get(problem), 30, "the data problem entity")
        state = w.until(lambda: w.state() or None, 30, "a state")
        assert "waiting for the federation's first global model" in state["problem"]
        read = set(re.findall(r"value_json\.(\w+)", config.decode())) - {"get"}
        assert read <= set(state) and state["model_version"] is None
        assert not any("_prediction/" in t for t in w.last)  # its kind is not known before the model
    finally:
        stop([node])
        w.stop()


def test_a_gateway_without_labels_stores_and_serves_and_reports_what_its_stream_dropped(local_broker, tmp_path):
    """Labels off (the label signal's topic is silent): rows are stored from the inputs and predictions are
    served; junk readings are counted by reason in the state Home Assistant reads and in the node's status."""
    import yaml

    from fedmq.shared.messages import Status
    from fedmq.shared.topics import Topics

    port = local_broker.port
    w = Watcher(port)
    status_topic = Topics(FED).status(("home1",), "home1-gw")
    w.link.subscribe(status_topic)
    sim, path = _gateway(tmp_path, port, {})
    cfg = yaml.safe_load(open(path))
    label = next(s for s in cfg["data"]["signals"] if s["name"] == "occupancy")
    for key in ("zigbee2mqtt", "tasmota", "statestream", "field", "topic"):
        label.pop(key, None)
    label["topic"] = "nobody/labels/this"
    cfg["min_samples"] = 1
    yaml.safe_dump(cfg, open(path, "w"))
    node = fedmq(["node", "run", path], str(tmp_path / "node.log"))
    try:
        w.until(lambda: w.state().get("problem", "").startswith("inputs:") or w.state().get("value") is not None, 30,
                "a first state")
        messages = list(sim.run(86400))
        sensors = [topic for _, topic, _ in messages if topic != CLOCK_TOPIC]
        junk = [(messages[-1][0], sensors[i], b"\xff not UTF-8") for i in range(5)]
        _publish(port, messages + junk)
        state = w.until(lambda: w.state() if w.state().get("value") is not None and w.state()["samples"] > 200
                        else None, 30, "predictions on the day's rows, stored without a single label")
        state = w.until(lambda: w.state() if w.state()["stream"]["dropped_readings"] == {"not UTF-8": 5} else None,
                        30, "the five junk readings counted, by reason, in the served state")
        assert state["stream"]["unlabelled_rows"] >= state["samples"]
        status = w.until(lambda: (lambda s: s if s and s.data.get("dropped") == {"not UTF-8": 5} else None)(
            Status.decode(w.last[status_topic]) if w.last.get(status_topic) else None), 90, "the junk in the status")
        assert status.data["unlabelled_rows"] > 200
        assert "no sample has a label" in status.problem or status.samples == 0
    finally:
        stop([node])
        w.stop()
