"""A node sends its update again when the broker lost its session while the round is still open."""

from __future__ import annotations

import time

import numpy as np

from fedmq.node.agent import NodeAgent
from fedmq.node.config import NodeConfig
from fedmq.shared.messages import Control, TrainParams
from fedmq.shared.topicmap import BrokerSettings, DataRef


class Link:
    """Records what the agent publishes; ``sessions_lost`` as MqttLink counts it."""

    def __init__(self) -> None:
        self.sent = []
        self.sessions_lost = 0
        self.birth = None
        self.connected = type("E", (), {"is_set": staticmethod(lambda: False)})()

    def publish(self, topic, payload, retain=False):
        self.sent.append((topic, payload))


def test_the_update_is_sent_again_after_the_broker_lost_the_session():
    cfg = NodeConfig(file="n.yaml", node_id="a", federation="f", group=("g",), broker=BrokerSettings(),
                     data=DataRef("npz", "x.npz"))
    agent = NodeAgent(cfg, np.zeros((4, 2), np.float32), np.zeros(4))
    agent.link = Link()
    start = Control("start", 3, attempt=9, model_version=2, deadline_at=time.time() + 30, selected=["a"],
                    train=TrainParams(1, 8, 0.1))
    agent.answered.add((3, 9, 2))
    agent.last_update = ((3, 9, 2), "fedmq/v1/f/g/_update/a", b"payload")
    agent._on_control(start)  # the retained start again, same session: nothing to do
    assert agent.link.sent == []
    agent.link.sessions_lost = 1  # reconnected without a session
    agent._on_control(start)
    assert agent.link.sent == [("fedmq/v1/f/g/_update/a", b"payload")]
    agent._on_control(start)  # once per lost session
    assert len(agent.link.sent) == 1
    agent.link.sessions_lost = 2
    agent._on_control(Control("start", 4, attempt=10, model_version=3, deadline_at=time.time() + 30, selected=["b"],
                              train=TrainParams(1, 8, 0.1)))
    assert len(agent.link.sent) == 1  # another round: nothing of ours to resend
