"""The model on the gateway: saved copies, exports, predictions, the serve section, discovery payloads,
personalisation and the serving state's decisions."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import yaml

from fedmq.coordinator.sim.scenario import OCCUPANCY_FEATURES
from fedmq.node.config import load_node_config
from fedmq.node.serve import discovery
from fedmq.node.serve.config import HomeAssistant, Personalise, ServeConfig
from fedmq.node.serve.personalise import LocalCache, clearly_better, held_out, personalise, score
from fedmq.node.serve.predictors import make_predictor
from fedmq.node.serve.server import Server
from fedmq.node.sources.features import Label, assemble, latest
from fedmq.node.sources.store import SampleStore
from fedmq.shared.data import DataError
from fedmq.shared.models import initial_weights
from fedmq.shared.saved_model import ModelFileError, SavedModel, as_tflite_kind, read_model
from fedmq.shared.scaling import Scaling
from fedmq.shared.topicmap import ModelSpec, TopicMapError
from fedmq.shared.topicmap.model import BrokerSettings

BINARY = ModelSpec(kind="softmax_regression", features=4, classes=(0, 1))
MULTI = ModelSpec(kind="mlp", features=4, classes=("a", "b", "c"), hidden=(5,))
REGRESSOR = ModelSpec(kind="sgd_regressor", features=4)


def _model(spec: ModelSpec, seed: int = 0, **kw) -> SavedModel:
    rng = np.random.default_rng(seed)
    weights = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in initial_weights(spec).items()}
    scaling = Scaling((1.0, 2.0, 3.0, 4.0), (0.5, 1.0, 2.0, 4.0), 100.0)
    return SavedModel(spec, weights, scaling, "fed", 5, 5, ("a", "b", "c", "d")[:spec.features], **kw)


@pytest.mark.parametrize("spec", [BINARY, MULTI, REGRESSOR])
def test_saved_copy_and_npz_export_predict_exactly_as_the_model(spec, tmp_path):
    model = _model(spec)
    x = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32) * 3
    model.save(str(tmp_path / "global-model.fmq"))
    model.export_npz(str(tmp_path / "m.npz"))
    for path in ("global-model.fmq", "m.npz"):
        back = read_model(str(tmp_path / path))
        assert back.spec == spec and back.scaling == model.scaling and back.feature_names == model.feature_names
        assert back.model_version == 5 and back.federation == "fed"
        p, q = model.predict(x), back.predict(x)
        assert p.values == q.values
        if spec.is_classifier:
            assert np.allclose(p.probabilities, q.probabilities) and np.allclose(p.probabilities.sum(1), 1)
    with np.load(str(tmp_path / "m.npz"), allow_pickle=False) as z:  # plain arrays, as documented
        meta = json.loads(str(z["meta"]))
        assert meta["head"] and meta["model"]["kind"] == spec.kind and "scaling.mean" in z.files


def test_the_same_network_as_a_tflite_kind_predicts_the_same(tmp_path):
    for spec in (BINARY, MULTI, REGRESSOR, ModelSpec(kind="sgd_classifier", features=4, classes=(0, 1))):
        model = _model(spec)
        x = np.random.default_rng(2).normal(size=(10, 4))
        a, b = model.predict(x), as_tflite_kind(model).predict(x)
        assert a.values == b.values
        if spec.is_classifier:
            assert np.allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_read_model_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "junk.fmq").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="junk.fmq: not a fedmq model"):
        read_model(str(tmp_path / "junk.fmq"))
    with pytest.raises(ModelFileError, match="no checkpoint in this directory"):
        read_model(str(tmp_path))
    with pytest.raises(ModelFileError, match="No such file"):
        read_model(str(tmp_path / "missing.npz"))


def test_tflite_runtime_predicts_what_numpy_predicts():
    pytest.importorskip("fedmq.coordinator.tflite_builder")
    from fedmq.coordinator.tflite_builder.export import to_tflite
    from fedmq.node.trainers import TrainerUnavailable

    for spec in (BINARY, MULTI, REGRESSOR):
        model = as_tflite_kind(_model(spec))
        try:
            predict = make_predictor("tflite", model, to_tflite(model))
        except TrainerUnavailable:
            pytest.skip("no TFLite runtime")
        x = np.random.default_rng(3).normal(size=(8, 4))
        a, b = model.predict(x), predict(x)
        if spec.is_classifier:
            assert a.values == b.values and np.allclose(a.probabilities, b.probabilities, atol=1e-4)
        else:
            assert np.allclose(a.values, b.values, atol=1e-4)


def test_latest_is_the_newest_row_of_assemble_and_needs_an_unbroken_history(tmp_path):
    from fedmq.node.sources.features import read_features
    from fedmq.shared.topicmap.reader import Reader

    signals = ["co2", "temperature", "illuminance", "power", "motion", "occupancy"]
    features = read_features(Reader("x"), OCCUPANCY_FEATURES, "features", 1, signals)
    t = np.arange(0, 300 * 40, 300, dtype=np.int64)
    v = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    x, _, times = assemble(features, Label("occupancy"), signals, t, v, 300.0, None)
    assert np.array_equal(latest(features, signals, t[-6:], v[-6:], 300.0, None), x[-1]) and times[-1] == t[-1]
    assert latest(features, signals, t[-5:], v[-5:], 300.0, None) is None  # a 6-period window needs 6 rows
    gap = t.copy()
    gap[-2] += 1  # a broken run
    assert latest(features, signals, gap[-6:], v[-6:], 300.0, None) is None
    store = SampleStore(str(tmp_path / "s.sqlite"), signals, 300.0, max_age_s=1e9, max_rows=1000)
    for ti, vi in zip(t, v):
        store.append(int(ti), vi)
    tt, vv = store.tail(6)
    assert np.array_equal(tt, t[-6:]) and np.allclose(vv, v[-6:])
    assert len(store.tail(100)[0]) == 40
    store.close()


def _node_yaml(tmp_path, serve, data_kind="mqtt") -> str:
    data = {"kind": "csv", "path": "x.csv"} if data_kind == "csv" else {
        "kind": "mqtt", "broker": {"port": 1884}, "signals": [{"name": "t", "topic": "s/t"}],
        "features": [{"signal": "t"}], "label": {"signal": "t", "horizon_s": 600}, "period_s": 60}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"node_id": "gw1", "federation": "f", "data": data, "serve": serve}))
    return str(path)


def test_serve_section_defaults_and_errors(tmp_path):
    cfg = load_node_config(_node_yaml(tmp_path, {}))
    s = cfg.serve
    assert s.topic == "fedmq/gw1" and s.period_s == 60 and s.max_input_age_s == 180
    assert s.broker.port == 1884 and s.homeassistant.discovery_prefix == "homeassistant"
    assert s.homeassistant.name == "gw1" and s.personalise is None
    assert load_node_config(_node_yaml(tmp_path, {"homeassistant": False, "personalise": True})).serve.personalise
    with pytest.raises(TopicMapError) as e:
        load_node_config(_node_yaml(tmp_path, {"topic": "a/+/b", "period_s": 0, "runtime": "gpu",
                                                "homeassistant": {"device_id": "my gateway", "colour": 1}}))
    text = str(e.value)
    for part in ("serve.topic", "wildcards", "serve.period_s", "serve.runtime", "serve.homeassistant.device_id",
                 "serve.homeassistant.colour", "unknown key"):
        assert part in text, text
    with pytest.raises(TopicMapError, match="live feature window"):
        load_node_config(_node_yaml(tmp_path, {}, data_kind="csv"))


def test_discovery_follows_home_assistants_schema():
    ha = HomeAssistant(device_id="gw_1", device_name="Kitchen gateway", name="Occupancy", device_class="occupancy")
    configs = discovery.configs(ha, "kitchen-gw", "fed", BINARY, "fedmq/k/state", "fedmq/k/availability")
    assert len(configs) == 6 and len({c["unique_id"] for c in configs.values()}) == 6
    pred = configs["homeassistant/binary_sensor/gw_1/kitchen-gw_prediction/config"]
    assert pred["device_class"] == "occupancy" and pred["payload_on"] == "ON"
    assert "icon" not in pred  # the device class's own (state-dependent) icon
    assert pred["device"] == {"identifiers": ["fedmq_gw_1"], "name": "Kitchen gateway", "manufacturer": "fedmq",
                              "model": "fedmq gateway", "sw_version": pred["device"]["sw_version"]}
    assert pred["json_attributes_topic"] == "fedmq/k/state" and "timestamp" not in pred["json_attributes_template"]
    # names of diagnostics carry the node's name: two nodes on one gateway do not share entity names
    names = [c["name"] for c in configs.values()]
    assert len(set(names)) == 6 and all(n.startswith("Occupancy") for n in names), names

    def owned(node, topic, config):
        return discovery.owned(ha, node, "fed", topic, json.dumps(config).encode())

    assert all(owned("kitchen-gw", t, c) for t, c in configs.items())
    samples = configs["homeassistant/sensor/gw_1/kitchen-gw_samples/config"]
    # the same entity announced under an earlier device id is the node's too (removed when it moves)
    assert owned("kitchen-gw", "homeassistant/sensor/gw_2/kitchen-gw_samples/config", samples)
    assert not owned("kitchen", "homeassistant/sensor/gw_1/kitchen-gw_samples/config", samples)
    assert not owned("kitchen", "homeassistant/sensor/gw_1/kitchen_gw_samples/config", samples)  # node kitchen_gw's
    assert not owned("kitchen-gw", "homeassistant/sensor/gw_2/kitchen-gw_samples/config",
                     {**samples, "unique_id": "someone_else"})
    temp = HomeAssistant(device_id="gw_1", name="Temperature", device_class="temperature", unit="°C")
    reg = discovery.configs(temp, "t", "fed", REGRESSOR, "s", "a")
    p = reg["homeassistant/sensor/gw_1/t_prediction/config"]
    assert p["unit_of_measurement"] == "°C" and p["state_class"] == "measurement" and p["device_class"] == "temperature"
    assert p["suggested_display_precision"] == 1
    assert reg["homeassistant/sensor/gw_1/t_local_rmse/config"]["unit_of_measurement"] == "°C"
    # before the first model: the diagnostics, so a new gateway shows with "waiting for the first model"
    waiting = discovery.configs(ha, "kitchen-gw", "fed", None, "s", "a")
    assert {t.rsplit("/", 2)[1] for t in waiting} == {"kitchen-gw_model_version", "kitchen-gw_last_round",
                                                     "kitchen-gw_samples", "kitchen-gw_data_problem"}
    # what Home Assistant refuses is left out of the config (and said by node check and the serving node)
    wrong = HomeAssistant(device_id="g", name="n", device_class="temperature", unit="C")
    p = discovery.configs(wrong, "n", "fed", BINARY, "s", "a")["homeassistant/binary_sensor/g/n_prediction/config"]
    assert "device_class" not in p and p["icon"] == "mdi:brain"
    enum = discovery.configs(HomeAssistant(device_id="g"), "n", "fed", MULTI, "s", "a")[
        "homeassistant/sensor/g/n_prediction/config"
    ]
    assert enum["device_class"] == "enum" and enum["options"] == ["a", "b", "c"]


def test_personalisation_serves_the_global_model_unless_fine_tuning_helps_on_the_newest_samples():
    newest = Personalise(epochs=5, holdout=0.2, spread="newest", local_epochs=0, refit=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)  # this home: class 1 when feature a is high
    model = SavedModel(
        BINARY, {"coef": np.zeros((2, 4), np.float32), "intercept": np.zeros(2, np.float32)}, None, "fed", 1
    )
    served, scores = personalise(model, x, y, newest, 0, 0.3, period_s=600)  # 600 samples: 4 days
    assert served is not model and scores["personalised"] > scores["global"] + 0.3
    good = served
    flipped = np.concatenate([1 - y[:480], y[480:]])  # older samples say the opposite of the newest 20 %
    again, scores = personalise(good, x, flipped, newest, 0, 0.3, period_s=600)
    assert again is good and scores["personalised"] < scores["global"]  # a fine-tuning that hurts is not served
    few, scores = personalise(model, x[:10], y[:10], Personalise(), period_s=600)
    assert few is model and "personalised" not in scores
    short, scores = personalise(model, x, y, Personalise(epochs=5), 0, 0.3, period_s=60)  # 10 hours of samples
    assert short is model and "personalised" not in scores  # a weekend alone would mislead: not yet


def test_samples_held_out_in_blocks_span_the_whole_history():
    blocks = held_out(1000, 0.2, "blocks")
    assert blocks.sum() == 200 and blocks[:400].any() and blocks[600:].any() and blocks[-1]  # old and new alike
    assert (np.diff(blocks.astype(int)) != 0).sum() == 7  # four contiguous blocks, not scattered rows
    assert held_out(1000, 0.25, "blocks").sum() == 250
    assert held_out(1000, 0.2, "newest").nonzero()[0].tolist() == list(range(800, 1000))


def test_the_homes_own_model_is_trained_once_for_many_global_models():
    """The local-only candidate does not depend on the federation's model: a gateway keeps it for an hour
    instead of training it again every round; what serves carries the new global model's version."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(800, 4)).astype(np.float32)
    y = (x[:, 1] > 0.3).astype(int)
    cache = LocalCache()
    wrong = {"coef": np.array([[2, 0, 0, 0], [-2, 0, 0, 0]], np.float32), "intercept": np.zeros(2, np.float32)}
    first, _ = personalise(SavedModel(BINARY, wrong, None, "fed", 5), x, y, Personalise(), 0, 0.3, 600, cache)
    assert cache.hits == 0
    again, scores = personalise(SavedModel(BINARY, wrong, None, "fed", 6), x, y, Personalise(), 0, 0.3, 600, cache)
    assert cache.hits >= 1 and again.model_version == 6
    assert scores["served"] > 0.9


def test_a_candidate_replaces_a_model_only_when_the_held_out_samples_show_a_clear_gain():
    theirs = np.zeros(200)
    theirs[:8] = 1  # 96 % right
    chance = theirs.copy()
    chance[:3] = 0  # 97.5 %: 3 samples of 200, what chance gives
    clear = np.zeros(200)  # every one right
    assert not clearly_better(chance, theirs) and clearly_better(clear, theirs)
    assert not clearly_better(theirs, theirs)  # a tie keeps the one before


def test_a_home_unlike_the_federation_is_served_its_own_model_trained_on_all_its_samples():
    """Defaults: a federated model that is wrong for this home loses to the local-only candidate on the held-out
    blocks, and what serves is that candidate trained again on every sample."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(800, 4)).astype(np.float32)
    y = (x[:, 1] > 0.3).astype(int)  # this home: feature b decides
    wrong = {"coef": np.array([[2, 0, 0, 0], [-2, 0, 0, 0]], np.float32), "intercept": np.zeros(2, np.float32)}
    model = SavedModel(BINARY, wrong, None, "fed", 1)
    served, scores = personalise(model, x, y, Personalise(), 0, 0.3, period_s=600)
    assert scores["choice"] in (1.0, 2.0) and scores["served"] > scores["global"] + 0.3
    assert score(served, served.weights, x, y) > 0.95


class _Source:
    """A stand-in for the live source's window (the state's decisions, not MQTT, are under test here)."""

    period_s = 60.0

    def __init__(self, problem: str = "", row_age: float = 0.0) -> None:
        self.problem, self.row_age = problem, row_age

    def now(self) -> float:
        return 1_800_000_000.0

    def current(self):  # type: ignore[no-untyped-def]
        if self.problem:
            raise DataError(self.problem)
        return np.ones(4, np.float32), int(self.now() - self.period_s - self.row_age)

    def rows_stored(self) -> int:
        return 42

    def counters(self):  # type: ignore[no-untyped-def]
        return {"dropped_rows": 3, "unlabelled_rows": 0, "dropped": {"not JSON": 2}}

    def load(self):  # type: ignore[no-untyped-def]
        return np.zeros((0, 4), np.float32), np.zeros(0)


def _server(source, **serve) -> Server:
    cfg = ServeConfig(topic="t", broker=BrokerSettings(), **{"max_input_age_s": 180.0, **serve})
    import logging

    return Server("n", "fed", cfg, source, logging.getLogger("test"))


def test_the_state_says_why_nothing_is_served():
    s = _server(_Source())
    assert s.state()["problem"].startswith("no model yet") and s.state()["samples"] == 42
    s.offer(_model(BINARY))
    s._take_offered()
    ok = s.state()
    assert ok["value"] in (0, 1) and ok["problem"] is None and ok["model_version"] == 5 and ok["confidence"] >= 0.5
    s.source = _Source(row_age=600)
    assert "stale" in s.state()["problem"] and s.state()["value"] is None
    s.source = _Source("no recent reading of co2 (within 900 s)")
    assert s.state()["problem"] == "inputs: no recent reading of co2 (within 900 s)"
    old = _server(_Source(), max_model_age_s=3600)
    old.offer(_model(BINARY, saved_at=time.time() - 7200))
    old._take_offered()
    assert "2.0 h old" in old.state()["problem"] and old.state()["value"] is None


def test_the_served_model_keeps_serving_while_the_next_one_is_personalised_aside():
    """Personalising takes seconds to minutes on a gateway: the first model is prepared at once, a later one
    beside the serving thread, and it serves only once it is ready."""

    class _SlowSource(_Source):
        def __init__(self) -> None:
            super().__init__()
            self.gate = threading.Event()

        def load(self):  # type: ignore[no-untyped-def]
            assert self.gate.wait(10), "the test opens the gate"
            return super().load()

    src = _SlowSource()
    src.gate.set()
    s = _server(src)
    s.offer(_model(BINARY))
    s._take_offered()
    assert s.state()["model_version"] == 5
    src.gate.clear()
    s.offer(replace(_model(BINARY), model_version=6))
    s._take_offered()  # starts preparing model 6 aside, blocked on the source
    assert s._preparing is not None and s._preparing.is_alive()
    s._take_offered()
    assert s.state()["model_version"] == 5 and s.state()["value"] in (0, 1)  # still served meanwhile
    src.gate.set()
    s._preparing.join(10)
    s._take_offered()
    assert s.state()["model_version"] == 6


def test_a_model_that_cannot_be_personalised_still_serves_as_it_came():
    class _BrokenStore(_Source):
        def load(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("database disk image is malformed")

    s = _server(_Source(), personalise=Personalise())
    s.offer(_model(BINARY))
    s._take_offered()
    s.source = _BrokenStore()
    s.offer(replace(_model(BINARY), model_version=6))
    s._take_offered()
    assert s._preparing is not None
    s._preparing.join(10)
    s._take_offered()
    assert s.state()["model_version"] == 6 and s.state()["personalised"] is False


def test_leftovers_of_a_dead_writer_go_and_a_live_writers_file_stays(tmp_path):
    """What a SIGKILL mid-save leaves is removed at start; the temporary file of a process still writing (a
    second process started with the same node id) is not pulled from under it."""
    import subprocess

    from fedmq.shared.files import remove_leftovers, write_atomic

    path = str(tmp_path / "global-model-kitchen.fmq")
    writer = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        live_tmp, dead_tmp = f"{path}.tmp.{writer.pid}", f"{path}.tmp.{dead.pid}"
        for p in (live_tmp, dead_tmp, f"{path}.tmp.garbage"):
            open(p, "wb").write(b"half")
        assert sorted(remove_leftovers(path)) == sorted([dead_tmp, f"{path}.tmp.garbage"])
        assert os.path.exists(live_tmp)
        write_atomic(path, b"whole")
        assert open(path, "rb").read() == b"whole" and os.path.exists(live_tmp)
    finally:
        writer.kill()
        writer.wait()


def test_home_assistants_rules_for_device_classes_and_units():
    from fedmq.node.serve import ha_rules

    assert ha_rules.problems("occupancy", None, BINARY) == []
    assert "not a binary_sensor class" in ha_rules.problems("temperature", None, BINARY)[0]
    assert ha_rules.problems("temperature", "°C", REGRESSOR) == []
    assert any("deprecated" in p and "'°C'" in p for p in ha_rules.problems("temperature", "C", REGRESSOR))
    assert "takes the units" in ha_rules.problems("temperature", "W", REGRESSOR)[0]
    assert "not a numeric sensor class" in ha_rules.problems("occupancy", None, REGRESSOR)[0]
    assert "enum sensor" in ha_rules.problems("occupancy", None, MULTI)[0]
    assert ha_rules.problems("occupancy", None, None) == [] and ha_rules.problems("power", None, None) == []
    assert "neither" in ha_rules.problems("tempreature", None, None)[0]


def test_node_check_refuses_what_home_assistant_would_refuse(tmp_path):
    """A two-class model with a sensor's device class, and a deprecated unit: node check says so (exit 2)."""
    import subprocess
    import sys

    node = _node_yaml(tmp_path, {"homeassistant": {"device_class": "temperature", "unit": "C"}})
    fed = tmp_path / "fed.yaml"
    fed.write_text(yaml.safe_dump({"federation": "f", "model": {"kind": "softmax_regression", "features": 1,
                                                                "classes": [0, 1]},
                                   "tree": {"nodes": ["gw1"]}}))
    r = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "node", "check", node, "--topic-map", str(fed)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "not a binary_sensor class" in r.stderr and "deprecated" in r.stderr and "'°C'" in r.stderr
