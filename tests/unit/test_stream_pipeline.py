"""Stream data sources without a broker: presets, payload parsing, sampling, features, labels, the store,
data checks and the scaling arithmetic."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from fedmq.coordinator.sim.homes import Simulation, payloads, signals_for
from fedmq.coordinator.sim.scenario import OCCUPANCY_FEATURES, data_section, width
from fedmq.node.sources.features import Feature, Label, assemble
from fedmq.node.sources.mqtt_source import MqttSource
from fedmq.node.sources.sampler import Sampler
from fedmq.node.sources.signals import BadValue, Signal, preset_topic
from fedmq.node.sources.store import SampleStore
from fedmq.shared.data import CsvSource, DataError, source_kinds
from fedmq.shared.datacheck import checked_data
from fedmq.shared.models import evaluate, from_layers, initial_weights, to_layers
from fedmq.shared.scaling import Scaling, local_stats, rescale_first_layer
from fedmq.shared.topicmap import ModelSpec, TopicMapError
from fedmq.shared.topicmap.model import BrokerSettings, DataRef
from fedmq.shared.topicmap.reader import Reader


def _source(data: dict, base: str = "/tmp") -> MqttSource:
    r = Reader("node.yaml")
    opts = MqttSource.read_options(r, data, "data", base)
    r.raise_if_any()
    return MqttSource(DataRef("mqtt", "", opts))


def test_mqtt_is_an_installed_source_kind():
    assert {"csv", "npz", "mqtt"} <= set(source_kinds())


@pytest.mark.parametrize("preset,device,topic", [
    ("zigbee2mqtt", "kitchen_sensor", "zigbee2mqtt/kitchen_sensor"),
    ("tasmota", "plug1", "tele/plug1/SENSOR"),
    ("statestream", "sensor.living_temp", "homeassistant/sensor/living_temp/state"),
])
def test_presets_spell_the_tools_topics(preset, device, topic):
    assert preset_topic(preset, device, None) == (topic, None)


def test_statestream_preset_needs_an_entity_id():
    assert preset_topic("statestream", "living_temp", None)[1] is not None
    assert preset_topic("zigbee2mqtt", "a/b", None)[1] is not None


@pytest.mark.parametrize("fmt", ["zigbee2mqtt", "tasmota", "statestream"])
def test_each_preset_parses_its_simulated_format(fmt):
    sim = Simulation(3, seed=1)
    home = next(h for h in sim.homes if h.format == fmt)
    reading = home.step(300.0, 300.0)
    msgs = dict(payloads(home, reading, np.random.default_rng(0)))
    r = Reader("x")
    from fedmq.node.sources.signals import read_signal

    for spec in signals_for(home.name, fmt):
        sig = read_signal(r, spec, "s", 1)
        assert sig is not None and not r.issues, r.issues
        value = sig.value(msgs[sig.topic])
        expected = {"temperature": reading.temperature, "occupancy": float(reading.occupancy),
                    "motion": float(reading.motion), "co2": reading.co2, "illuminance": reading.illuminance,
                    "power": reading.power}[sig.name]
        assert value == pytest.approx(expected, abs=max(60.0, 0.2 * abs(expected)))


def test_real_zigbee2mqtt_and_tasmota_payloads():
    z2m = b'{"battery":100,"humidity":48.16,"linkquality":156,"temperature":21.37,"voltage":3000,"occupancy":true}'
    assert Signal("t", "x", "temperature").value(z2m) == 21.37
    assert Signal("o", "x", "occupancy").value(z2m) == 1.0
    tasmota = b'{"Time":"2026-11-27T10:00:00","ENERGY":{"Total":1.2,"Power":57,"Voltage":231}}'
    assert Signal("p", "x", "ENERGY.Power").value(tasmota) == 57.0
    assert Signal("s", "x").value(b"ON") == 1.0 and Signal("s", "x").value(b"off") == 0.0
    assert Signal("m", "x", states={"cooking": 2.0}).value(b"cooking") == 2.0


@pytest.mark.parametrize("payload,reason", [
    (b"not json", "not JSON"), (b'{"temperature": "warm"}', "not a number or known state"),
    (b'{"temperature": [1]}', "wrong type"), (b'{"humidity": 3}', "field missing"),
    (b"\xff\xfe", "not UTF-8"), (b"x" * 70_000, "too large"), (b'{"temperature": 1e999}', "not finite"),
])
def test_bad_payloads_name_their_reason(payload, reason):
    with pytest.raises(BadValue) as exc:
        Signal("t", "x", "temperature").value(payload)
    assert exc.value.reason == reason


def test_sampler_means_last_values_forward_fill_and_drops():
    rows = []
    s = Sampler([Signal("a", "a", aggregate="mean"), Signal("b", "b")], 60.0, 120.0,
                lambda t, v: rows.append((t, v.tolist())))
    s.add(0, 1.0, 0.0)
    s.add(0, 3.0, 10.0)
    s.add(1, 5.0, 20.0)
    s.add(1, 7.0, 30.0)
    s.advance(60.0)  # closes period 0
    assert rows == [(0, [2.0, 7.0])]
    s.advance(120.0)  # period 1: nothing new, filled from 30 s ago
    assert rows[-1] == (60, [3.0, 7.0])
    s.advance(400.0)  # readings now too old: rows dropped and counted, the gap skipped
    assert len(rows) == 2 and s.dropped_rows == 1  # period 2 ends 150 s after the last reading
    b_only = Sampler([Signal("a", "a"), Signal("b", "b")], 60.0, 0.0, lambda t, v: rows.append(t))
    b_only.add(1, 1.0, 0.0)
    b_only.advance(60.0)
    assert b_only.dropped_rows == 1  # signal a never reported: no row with a hole in it


def test_features_windows_lags_time_and_forecast_labels():
    t = np.arange(0, 20 * 60, 60, dtype=np.int64)
    v = np.stack([np.arange(20.0), np.arange(20.0) % 2], axis=1)
    feats = [Feature("value", "a"), Feature("lag", "a", (1, 2)), Feature("mean", "a", window=3),
             Feature("slope", "a", window=4), Feature("time_of_day")]
    x, y, ts = assemble(feats, Label("b"), ["a", "b"], t, v, 60.0, None)
    assert x.shape == (17, 7) and ts[0] == 3 * 60  # the first 3 rows lack history
    assert x[0, :5].tolist() == [3.0, 2.0, 1.0, 2.0, 1.0]
    assert np.allclose(x[:, 4], 1.0)  # slope of a ramp: 1 per period
    assert y.tolist() == (np.arange(3, 20) % 2).tolist()
    x2, y2, _ = assemble([Feature("value", "a")], Label("a", 180.0), ["a", "b"], t, v, 60.0, None)
    assert len(x2) == 17 and (y2 - x2[:, 0] == 3).all()  # label three periods ahead; the last 3 wait for it
    gap = np.concatenate([t[:10], t[10:] + 3600])  # a broken run: windows never span it
    x3, _, _ = assemble([Feature("mean", "a", window=3)], Label("b"), ["a", "b"], gap, v, 60.0, None)
    assert len(x3) == 16


def test_store_keeps_rows_across_reopen_and_applies_retention(tmp_path):
    path = str(tmp_path / "s.sqlite")
    st = SampleStore(path, ["a", "b"], 60.0, max_age_s=3600, max_rows=50)
    for i in range(100):
        st.append(i * 60, np.array([i, -i], float))
    st.close()
    st = SampleStore(path, ["a", "b"], 60.0, max_age_s=1800, max_rows=50)
    t, v = st.rows()
    assert len(t) == 50 and t[-1] == 99 * 60 and v[-1].tolist() == [99.0, -99.0]
    st.append(100 * 60, np.array([1.0, 1.0]))
    st.flush()
    t, _ = st.rows()
    assert t[0] >= 100 * 60 - 1800  # age retention
    st.close()
    with pytest.raises(DataError, match="other signals"):
        SampleStore(path, ["a", "c"], 60.0, max_age_s=1, max_rows=10)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_source_options_are_validated_with_file_line_key_and_fix():
    data = data_section(Simulation(1).homes[0], BrokerSettings(), 300, "s.sqlite")
    assert _source(data).width == width(OCCUPANCY_FEATURES) == 13
    bad = json.loads(json.dumps(data))
    bad["signals"][0] = {"name": "temperature", "zigbee2mqtt": "x"}  # no field
    bad["features"].append({"signal": "nope"})
    bad["label"] = {"signal": "occupancy", "horizon_s": 100}
    bad["timezone"] = "Mars/Olympus"
    with pytest.raises(TopicMapError) as exc:
        _source(bad)
    text = str(exc.value)
    for key in ("data.signals[0].field", "data.features[11].signal", "data.label.horizon_s", "data.timezone"):
        assert key in text, text


def test_replay_matches_declared_width():
    sim = Simulation(2, seed=3)
    msgs = [(tp, pl) for _, tp, pl in sim.run(86400)]
    for home in sim.homes:
        x, y = _source(data_section(home, BrokerSettings(), 300, "s.sqlite")).replay(msgs)
        assert x.shape[1] == 13 and len(x) > 200 and set(np.unique(y)) <= {0.0, 1.0}


def test_csv_labels_written_as_floats_are_read_as_classes(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1,2,9.0\n3,4,1\n5,6,1.0\n")
    x, y = CsvSource(DataRef("csv", str(p))).load()
    spec = ModelSpec("softmax_regression", 2, tuple(range(10)))
    assert checked_data(spec, x, y)[2] is None
    assert checked_data(ModelSpec("softmax_regression", 2, (0, 1)), x, y)[2].startswith("labels outside")


@pytest.mark.parametrize("x,y,problem", [
    (np.zeros((5, 3)), np.zeros(5), "wrong number of features"),
    (np.full((5, 2), np.nan), np.zeros(5), "NaN or Inf"),
    (np.zeros((1, 2)), np.zeros(1), "too few samples"),
    (np.zeros((5, 2)), np.array(["cat"] * 5, dtype=object), "labels outside"),
])
def test_data_problems_are_named(x, y, problem):
    found = checked_data(ModelSpec("softmax_regression", 2, (0, 1)), x, y, min_samples=2)[2]
    assert found is not None and found.startswith(problem)


def test_federated_statistics_equal_central_ones():
    rng = np.random.default_rng(0)
    parts = [rng.normal(rng.uniform(-50, 50, 4), rng.uniform(0.1, 30, 4), (rng.integers(5, 200), 4)) for _ in range(7)]
    n = np.array([len(p) for p in parts], float)
    stats = [local_stats(p) for p in parts]
    means = {k: sum(w * s[k] for w, s in zip(n, stats)) / n.sum() for k in ("mean", "meansq")}
    fed = Scaling.from_means(means, n.sum())
    allx = np.concatenate(parts)
    assert np.allclose(fed.mean, allx.mean(0), rtol=1e-10) and np.allclose(fed.scale, allx.std(0), rtol=1e-8)
    assert Scaling.from_meta(fed.to_meta(), 4) == fed
    with pytest.raises(ValueError):
        Scaling.from_meta({"mean": [0] * 4, "scale": [1, 1, 1, 0]}, 4)


@pytest.mark.parametrize("kind,hidden", [("softmax_regression", ()), ("mlp", (5,))])
def test_refolding_keeps_the_models_function(kind, hidden):
    spec = ModelSpec(kind, 3, (0, 1), hidden, seed=1)
    rng = np.random.default_rng(2)
    w = {k: rng.normal(0, 1, v.shape) for k, v in initial_weights(spec).items()}
    x = rng.normal(10, 5, (50, 3))
    y = rng.integers(0, 2, 50)
    old = Scaling((1.0, 2.0, 3.0), (2.0, 1.0, 0.5))
    new = Scaling((10.0, 9.0, 11.0), (5.0, 4.0, 6.0))
    moved = from_layers(spec, rescale_first_layer(spec, to_layers(spec, w), old, new), np.float64)
    assert evaluate(spec, w, old.apply(x), y)["loss"] == pytest.approx(evaluate(spec, moved, new.apply(x), y)["loss"],
                                                                       rel=1e-5)


def test_features_computed_in_blocks_equal_one_pass(monkeypatch):
    from fedmq.node.sources import features as fm

    rng = np.random.default_rng(4)
    t = np.cumsum(np.where(rng.random(500) < 0.03, 180, 60)).astype(np.int64)  # a few gaps
    v = rng.normal(20, 3, (500, 2))
    feats = [Feature("value", "a"), Feature("lag", "a", (1, 4)), Feature("std", "b", window=5),
             Feature("slope", "a", window=6), Feature("max", "b", window=3), Feature("day_of_week")]
    whole = assemble(feats, Label("b", 120.0), ["a", "b"], t, v, 60.0, None)
    monkeypatch.setattr(fm, "BLOCK", 7)
    blocks = assemble(feats, Label("b", 120.0), ["a", "b"], t, v, 60.0, None)
    for a, b in zip(whole, blocks):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_wildcard_signal_combines_every_matching_topic_and_junk_is_counted():
    from fedmq.node.sources.mqtt_source import Ingest

    rows = []
    signals = [Signal("motion", "zigbee2mqtt/+/motion", "occupancy", aggregate="mean"), Signal("t", "home/t")]
    ingest = Ingest(signals, Sampler(signals, 60.0, 120.0, lambda t, v: rows.append(v.tolist())), "clock")
    ingest.feed("clock", b"1767600000")
    ingest.feed("zigbee2mqtt/hall/motion", b'{"occupancy": true}')
    ingest.feed("zigbee2mqtt/kitchen/motion", b'{"occupancy": false}')
    ingest.feed("zigbee2mqtt/kitchen/other", b'{"occupancy": true}')  # no signal listens there
    ingest.feed("home/t", b"21.5")
    ingest.feed("home/t", b"warm")
    ingest.feed("clock", b"2026-01-05T08:01:00Z")  # ISO 8601 works too; closes the period
    assert rows == [[0.5, 21.5]]
    assert ingest.counters()["dropped"] == {"not a number or known state": 1}


APPLIANCE = {
    "broker": {"port": 1884},
    "signals": [{"name": "power", "tasmota": "plug1", "field": "ENERGY.Power"},
                {"name": "appliance", "statestream": "input_select.plug1_appliance", "hold": True,
                 "states": {"kettle": 0, "toaster": 1}, "unset": ["unknown", "unavailable", "none"]}],
    "features": [{"signal": "power"}, {"signal": "power", "kind": "mean", "window": 3}],
    "label": {"signal": "appliance"},
    "period_s": 60, "max_age_s": 120, "clock_topic": "clock",
}
LABEL_TOPIC = "homeassistant/input_select/plug1_appliance/state"


def _power(w: float) -> bytes:
    return json.dumps({"Time": "2026-01-05T08:00:00", "ENERGY": {"Power": w}}).encode()


def test_rows_are_stored_from_their_inputs_and_a_label_attaches_when_it_is_known(tmp_path):
    """No label yet: rows are stored (unlabelled) and served, none trains. A label published once, on change,
    holds past max_age_s; an 'unset' word ('none') leaves later rows unlabelled; string classes come from the
    label's states."""
    src = _source(APPLIANCE, str(tmp_path))
    t0, msgs = 1767600000, []
    for k in range(12):  # 12 minutes of power readings, one a minute
        msgs += [("clock", str(t0 + 60 * k).encode()), ("tele/plug1/SENSOR", _power(100.0 + k))]
        if k == 4:
            msgs.append((LABEL_TOPIC, b"kettle"))  # said once, on change (as an input_select publishes)
        if k == 9:
            msgs.append((LABEL_TOPIC, b"none"))  # the household says: nothing runs now
    times, rows = [], []
    ingest = src._ingest(lambda t, v: (times.append(t), rows.append(v)))
    for topic, payload in msgs:
        ingest.feed(topic, payload)
    v = np.stack(rows)
    assert len(rows) == 11 and np.isnan(v[:4, 1]).all() and (v[4:9, 1] == 0).all() and np.isnan(v[9:, 1]).all()
    assert ingest.counters()["unlabelled_rows"] == 6 and ingest.counters()["dropped_rows"] == 0
    x, y = src.samples(np.asarray(times, np.int64), v)
    assert len(x) == 5  # the labelled rows with their 3-row window (rows 4 to 8); max_age_s did not expire it
    spec = ModelSpec("softmax_regression", 2, ("kettle", "toaster"))
    _, labels, problem = checked_data(spec, x, y, names=src.label_names)
    assert problem is None and list(labels) == ["kettle"] * 5
    from fedmq.node.sources.features import latest

    assert latest(src.features, ["power", "appliance"], np.asarray(times, np.int64), v, 60.0, None) is not None


def test_a_label_retained_before_the_first_clock_tick_is_kept():
    src = _source(APPLIANCE)
    rows = []
    ingest = src._ingest(lambda t, v: rows.append(v.tolist()))
    ingest.feed(LABEL_TOPIC, b"toaster")  # the broker's retained label arrives first
    ingest.feed("tele/plug1/SENSOR", _power(900.0))
    ingest.feed("clock", b"1767600000")
    ingest.feed("clock", b"1767600060")
    assert rows == [[900.0, 1.0]] and ingest.counters()["dropped"] == {}


def test_time_from_the_readings_own_timestamps():
    """time: reading: Tasmota's Time (local time of the source's zone) and zigbee2mqtt's last_seen (ISO or
    epoch milliseconds) place readings; a message without one is timed by arrival, counted."""
    from fedmq.node.sources.mqtt_source import _reading_time

    data = {**APPLIANCE, "time": "reading", "timezone": "Europe/Berlin"}
    data.pop("clock_topic")
    src = _source(data)
    assert src.options["time"] == "reading" and src.signals[0].time_field == "Time"
    berlin = src.tz
    assert _reading_time({"Time": "2026-01-05T09:00:00"}, "Time", berlin) == 1767600000.0
    assert _reading_time({"last_seen": "2026-01-05T08:00:00Z"}, "last_seen", None) == 1767600000.0
    assert _reading_time({"last_seen": 1767600000000}, "last_seen", None) == 1767600000.0
    rows = []
    ingest = src._ingest(lambda t, v: rows.append((t, v.tolist())))
    for minute in range(3):
        payload = {"Time": f"2026-01-05T09:0{minute}:10", "ENERGY": {"Power": 10.0 * minute}}
        ingest.feed("tele/plug1/SENSOR", json.dumps(payload).encode())
    assert [t for t, _ in rows] == [1767600000, 1767600060]  # the readings' own minutes, not today's
    ingest.feed("tele/plug1/SENSOR", json.dumps({"ENERGY": {"Power": 1.0}}).encode())
    assert ingest.counters()["arrival_times"] == 1


@pytest.mark.parametrize("period", [0.5, 1.5])
def test_a_period_that_is_not_whole_seconds_is_refused_with_the_fix(period):
    with pytest.raises(TopicMapError, match=r"data\.period_s.*whole number of seconds"):
        _source({**APPLIANCE, "period_s": period})
    with pytest.raises(TopicMapError, match="time: clock needs a clock_topic"):
        _source({k: v for k, v in {**APPLIANCE, "time": "clock"}.items() if k != "clock_topic"})
