"""Hostile clients against a real Mosquitto: floods, oversized packets, poisoned updates, forged ids.
The round completes and the coordinator keeps counting what it refused."""

import threading

import numpy as np
import paho.mqtt.client as mqtt

from fedhelp import FED, start_nodes, stop, wait_for, write_federation
from fedmq.shared.messages import Status
from fedmq.shared.models import initial_weights
from fedmq.shared.topicmap import load_topic_map
from inprocess import InThreadCoordinator, RogueNode

GROUPS = {"home1": ["a1", "a2", "a3"], "home2": ["b1", "b2", "rogue"]}
LIMITS = {"max_samples": 5000, "max_update_norm": 50.0, "max_messages_per_node_s": 5, "message_burst": 20}


def test_floods_oversized_packets_and_poisoned_updates_are_refused(broker, tmp_path):
    paths = write_federation(str(tmp_path), broker.port, GROUPS, rounds=2, deadline_s=8, quorum=0.8)
    text = open(paths["topic_map"]).read() + "limits: " + str(LIMITS).replace("'", "") + "\n"
    open(paths["topic_map"], "w").write(text)
    tm = load_topic_map(paths["topic_map"])
    rogue = RogueNode(broker.port, "rogue", ("home2",))
    nodes = start_nodes(paths, ["a1", "a2", "a3", "b1", "b2"], tmp_path)
    good = initial_weights(tm.model)
    try:
        with InThreadCoordinator(paths["topic_map"]) as c:
            ctl = rogue.wait_start()

            def update(**kw):
                return rogue.update(ctl, good, **kw)

            # weight poisoning: a huge update, and a huge claimed sample count
            rogue.send(update(tensors={k: v + 1e4 for k, v in good.items()}))
            rogue.send(update(samples=10**9))
            wait_for(lambda: c.service.rejections.total["update norm too large"] == 1
                     and c.service.rejections.total["bad sample count"] == 1, 10, "the poisoning rejections")
            # a flood of garbage on its own topic
            for _ in range(300):
                rogue.send(b"\x00" * 64)
            wait_for(lambda: c.service.rejections.total["rate limit"] > 200, 20, "the rate limit")
            # forged identities: another node's status, ids with wildcard characters
            rogue.link.publish(f"fedmq/v1/{FED}/home2/_status/b1", Status("a+b", "offline").encode())
            rogue.link.publish(f"fedmq/v1/{FED}/home2/_status/x%2Fy", Status("x/y", "online").encode())
            wait_for(lambda: c.service.rejections.total["sender mismatch"] >= 1
                     and c.service.rejections.total["unknown node"] >= 1, 10, "the forged statuses")
            assert c.service.presence.state["b1"] == "online"
            # an MQTT packet over the broker's max_packet_size: the broker drops that client, nobody else
            raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="oversize", protocol=mqtt.MQTTv5)
            gone = threading.Event()
            raw.on_disconnect = lambda *a: gone.set()
            raw.connect("127.0.0.1", broker.port)
            raw.loop_start()
            raw.publish(f"fedmq/v1/{FED}/home2/_update/rogue", b"\0" * (17 * 1024 * 1024), qos=1)
            assert gone.wait(20), "the broker should disconnect a client that sends an oversized packet"
            raw.loop_stop()
            wait_for(lambda: len(c.rounds) >= 1, 20, "round 1 despite it all")
            assert c.rounds[0]["updates"] == 5  # the rogue never got an update in
            wait_for(lambda: len(c.rounds) >= 2, 20, "round 2")
            assert c.error is None
    finally:
        rogue.link.stop()
        stop(list(nodes.values()))
    assert np.isfinite(c.rounds[-1]["loss"])
