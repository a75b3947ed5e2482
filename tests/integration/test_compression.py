"""Compressed updates and chunked messages through a real Mosquitto that refuses packets over 4 KB."""

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from fedhelp import FED, fedmq, stop, wait_for, write_federation
from fedmq.broker.process import MosquittoProcess
from fedmq.shared import chunks
from fedmq.shared.envelope import MAGIC, PREFIX
from fedmq.shared.topics import Topics

GROUPS = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "b3"]}
CAP = 4096  # the broker's max_packet_size: anything larger disconnects the sender and is lost
MLP = {"kind": "mlp", "features": 8, "classes": [0, 1, 2], "hidden": [96]}  # 1,155 parameters: 4.6 KB as float32


class Sniffer:
    """A plain paho client that watches every message of the federation."""

    def __init__(self, port):
        self.sizes, self.topics, self.payloads, self.lock = [], [], [], threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{Topics(FED).base}/#")
        self.client.loop_start()

    def _on(self, client, userdata, msg):
        with self.lock:
            self.sizes.append(len(msg.payload))
            self.topics.append(msg.topic)
            self.payloads.append(msg.payload if "/_update/" in msg.topic else b"")

    def update_bodies(self):
        """body_len (tensor bytes) of every update envelope seen."""
        return [PREFIX.unpack_from(p, 0)[5] for p in self.payloads if p[:4] == MAGIC]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def capped_broker(tmp_path):
    proc = MosquittoProcess(str(tmp_path / "mosquitto"), max_packet_bytes=CAP).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("update,model_codec,edge", [
    ({"update": "topk", "topk_fraction": 0.05}, "float16", ["home2"]),
    ({"update": "int8", "int8_block": 256}, "raw", []),
])
def test_compressed_federation_through_a_capped_broker(capped_broker, tmp_path, update, model_codec, edge):
    port = capped_broker.port
    paths = write_federation(str(tmp_path), port, GROUPS, rounds=4, edge=edge, extra={
        "model": MLP, "compression": {**update, "model": model_codec},
        "transport": {"max_payload_bytes": CAP - 1024, "chunk_timeout_s": 5}})
    sniff = Sniffer(port)
    report = tmp_path / "report.json"
    procs = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
    procs += [fedmq(["coordinator", "edge", paths["topic_map"], "--group", g], str(tmp_path / f"edge-{g}.log"))
              for g in edge]
    coord = fedmq(["coordinator", "run", paths["topic_map"], "--report", str(report)], str(tmp_path / "coord.log"))
    try:
        assert coord.wait(90) == 0, (tmp_path / "coord.log").read_text()[-3000:]
    finally:
        stop([coord, *procs])
        sniff.close()
    rounds = json.loads(report.read_text())["rounds"]
    assert [r["updates"] for r in rounds] == [6, 6, 6, 6]
    assert rounds[-1]["accuracy"] > 0.9, rounds
    assert max(sniff.sizes) <= CAP - 1024  # nothing ever came near the broker's cap
    t = Topics(FED)
    model_chunks = [x for x in sniff.topics if x.startswith(t.model() + chunks.SUFFIX)]
    partial_chunks = [x for x in sniff.topics if "/_partial/" in x and chunks.SUFFIX in x]
    if model_codec == "raw":
        assert model_chunks, "the model (over the cap as float32) travelled in chunks"
    else:
        assert (
            not model_chunks and max(s for x, s in zip(sniff.topics, sniff.sizes) if x == t.model()) < 2 * 1155 + 700
        )  # float16 plus the header
    assert partial_chunks, "the groups' partial sums (float64, 9 KB) travel in chunks"
    bodies = sniff.update_bodies()
    assert len(bodies) >= 24
    # int8: 1 byte per entry plus scales; topk at 5 % (58 entries): Elias-Fano indices (about 2 + log2(20) bits)
    # and 4-bit values, about 10.5 bits per kept entry and one scale: over 50x smaller than float32.
    ratio = 3.8 if update["update"] == "int8" else 50
    assert max(bodies) <= 4 * 1155 / ratio, bodies[:3]  # tensor bytes against float32
    for n in ("a1", "b1"):
        log = (tmp_path / f"{n}.log").read_text()
        assert f"update codec: {update['update']} (deltas)" in log


def test_bad_and_incomplete_chunks_are_rejected_and_the_federation_goes_on(capped_broker, tmp_path):
    port = capped_broker.port
    paths = write_federation(
        str(tmp_path),
        port,
        GROUPS,
        rounds=2,
        deadline_s=15,
        extra={"model": MLP, "transport": {"max_payload_bytes": CAP - 1024, "chunk_timeout_s": 2}},
    )
    report = tmp_path / "report.json"
    coord = fedmq(["coordinator", "run", paths["topic_map"], "--report", str(report)], str(tmp_path / "coord.log"))
    procs = []
    hostile = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    hostile.connect("127.0.0.1", port)
    hostile.loop_start()
    try:
        wait_for(lambda: "waiting for nodes" in (tmp_path / "coord.log").read_text(), 30, "the coordinator")
        upd = Topics(FED).update(("home1",), "a1")
        frames = chunks.split(b"x" * 5000, 2048)
        hostile.publish(chunks.chunk_topic(upd, 0), frames[0], qos=1).wait_for_publish(5)  # the rest never comes
        bad = frames[1][:60] + b"garbage"
        hostile.publish(chunks.chunk_topic(upd, 7), bad, qos=1).wait_for_publish(5)  # index and topic disagree
        wait_for(lambda: "incomplete chunks" in (tmp_path / "coord.log").read_text(), 10, "the chunk timeout")
        procs = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
        assert coord.wait(90) == 0, (tmp_path / "coord.log").read_text()[-3000:]
    finally:
        hostile.loop_stop()
        stop([coord, *procs])
    log = (tmp_path / "coord.log").read_text()
    assert "bad chunk" in log and "1 of 3 chunks arrived within 2s" in log
    rounds = json.loads(report.read_text())["rounds"]
    assert [r["updates"] for r in rounds] == [6, 6]


def test_retained_chunked_messages_are_replaced_cleanly(broker, tmp_path):
    """A retained message that shrinks, grows into chunks and shrinks again: a subscriber that comes later
    gets exactly the latest version, never a stale whole message or stale chunks."""
    from fedmq.shared.mqtt import MqttLink
    from fedmq.shared.topicmap import BrokerSettings

    settings = BrokerSettings(host=broker.host, port=broker.port)
    pub = MqttLink("chunk-pub", settings, persistent=False, chunk_bytes=1024)
    assert pub.start()
    topic = f"fedmq/v1/{FED}/_model"
    versions = [b"A" * 5000, b"B" * 100, b"C" * 3000, b"D" * 2000]
    try:
        for payload in versions:
            pub.publish(topic, payload, retain=True)
            assert pub.flush(5)
            sub = MqttLink(f"chunk-sub-{payload[:1].decode()}", settings, persistent=False)
            sub.subscribe(topic)
            assert sub.start()
            got = []
            end = time.monotonic() + 1
            while time.monotonic() < end:
                msg = sub.get(timeout=0.2)
                if msg is not None:
                    got.append(msg.payload)
            sub.stop()
            assert got == [payload], [g[:1] + str(len(g)).encode() for g in got]
    finally:
        pub.stop()


def test_malformed_top_k_updates_are_refused_and_the_round_completes(broker, tmp_path):
    """A node written from the protocol document sends Elias-Fano / int4 top-k updates that break the codec's
    rules; each is refused by name, the honest nodes' round completes, and the model stays finite."""
    import numpy as np

    from fedhelp import start_nodes
    from fedmq.shared.topicmap import load_topic_map
    from inprocess import InThreadCoordinator, RogueNode

    groups = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "rogue"]}
    paths = write_federation(
        str(tmp_path),
        broker.port,
        groups,
        rounds=2,
        deadline_s=6,
        quorum=0.8,
        extra={"compression": {"update": "topk", "topk_fraction": 0.1}},
    )
    assert load_topic_map(paths["topic_map"]).compression.update.index == "ef"
    rogue = RogueNode(broker.port, "rogue", ("home2",))
    nodes = start_nodes(paths, ["a1", "a2", "a3", "b1", "b2"], tmp_path)
    scale = np.ones(1, np.float32)
    hostile = [  # 27 entries: two indices need 3 low bits each
        {"@hi": np.array([0b10100000, 0], np.uint8), "@lo": np.zeros(1, np.uint8)},  # a trailing zero byte
        {"@hi": np.full(64, 255, np.uint8), "@lo": np.zeros(0, np.uint8)},  # more 1 bits than entries
        {"@hi": np.array([0b11000000], np.uint8), "@lo": np.zeros(1, np.uint8)},  # the same index twice
        {"@hi": np.array([0b10100000], np.uint8), "@lo": np.zeros(5, np.uint8)},  # a low stream of the wrong length
    ]
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            ctl = rogue.wait_start()
            params = {"delta": True, "index": "ef", "values": "int4"}
            for index in hostile:
                rogue.send(
                    rogue.update(
                        ctl,
                        {**index, "@val": np.array([0x17], np.uint8), "@val@scale": scale},
                        codec="topk",
                        codec_params=params,
                    )
                )
            rogue.send(
                rogue.update(
                    ctl,
                    {
                        "@hi": np.array([0b10100000], np.uint8),
                        "@lo": np.zeros(1, np.uint8),
                        "@val": np.array([0x18], np.uint8),
                        "@val@scale": scale,
                    },  # code -8
                    codec="topk",
                    codec_params=params,
                )
            )
            wait_for(lambda: c.service.rejections.total["wrong shape or dtype"] >= 5, 10, "the five rejections")
            wait_for(lambda: len(c.rounds) >= 1, 20, "round 1 from the honest nodes")
            assert c.rounds[0]["updates"] == 5 and c.rounds[0]["rejected"] == {"wrong shape or dtype": 5}
            assert np.isfinite(c.rounds[0]["loss"])
            assert c.error is None
    finally:
        rogue.link.stop()
        stop(list(nodes.values()))
