"""The smart-plug simulator: deterministic, each plug's classes its own, signatures a node can tell apart, and
messages that a gateway's stream source turns into labelled rows with the model's class words."""

from __future__ import annotations

import numpy as np

from fedmq.coordinator.demo.appliances import FEATURES
from fedmq.coordinator.sim.appliances import CLASSES, NONE, PlugSimulation, label_topic, signals_for
from fedmq.coordinator.sim.scenario import stream_data, width
from fedmq.node.sources.mqtt_source import MqttSource
from fedmq.shared.datacheck import normalise_labels
from fedmq.shared.topicmap import ModelSpec
from fedmq.shared.topicmap.model import BrokerSettings, DataRef
from fedmq.shared.topicmap.reader import Reader


def test_the_same_seed_gives_the_same_messages_and_plugs_differ_in_what_they_run():
    a, b = PlugSimulation(2, seed=3), PlugSimulation(2, seed=3)
    assert list(a.run(6 * 3600)) == list(b.run(6 * 3600))
    owns = [p.owns for p in a.homes]
    assert len(owns) == 4 and len(set(owns)) > 1 and all(2 <= len(o) <= 4 for o in owns)
    for plug in a.homes:
        assert set(plug.labels) <= {NONE, *plug.owns}


def test_signatures_tell_the_kinds_apart():
    sim = PlugSimulation(3, seed=0)
    list(sim.run(4 * 86400))
    draw = {}
    for plug in sim.homes:
        labels = np.array(plug.labels[: len(plug.watts)])
        for kind in set(labels):
            draw.setdefault(kind, []).append(plug.watts[labels == kind])
    median = {k: float(np.median(np.concatenate(v))) for k, v in draw.items()}
    assert median[NONE] < 1
    if "kettle" in median:
        assert 1500 < median["kettle"] < 2600
    if "lamp" in median:
        assert 5 < median["lamp"] < 15


def test_a_gateway_reads_power_and_its_label_as_class_words(tmp_path):
    sim = PlugSimulation(2, seed=1, report_s=60)
    messages = list(sim.run(86400))
    plug = sim.homes[0]
    assert any(topic == label_topic(plug) for _, topic, _ in messages)  # published when it changes only
    assert sum(topic == label_topic(plug) for _, topic, _ in messages) < 200
    data = stream_data(signals_for(plug), FEATURES, {"signal": "appliance"}, BrokerSettings("127.0.0.1", 1), 60.0,
                       str(tmp_path / "s.sqlite"))
    r = Reader("node.yaml")
    src = MqttSource(DataRef("mqtt", "", MqttSource.read_options(r, data, "data", str(tmp_path))))
    r.raise_if_any()
    x, y = src.replay([(topic, payload) for _, topic, payload in messages])
    assert x.shape[1] == width(FEATURES) and len(x) > 1200
    spec = ModelSpec(kind="mlp", features=width(FEATURES), classes=CLASSES, hidden=(8,))
    words = normalise_labels(spec, y, src.label_names)
    assert set(words) <= {NONE, *plug.owns} and len(set(words)) >= 2
