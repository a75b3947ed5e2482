"""Rate limits are per sender: a flood on another group's topic under a node's id, or on another node's topic,
never spends that node's budget."""

from __future__ import annotations

from fedmq.coordinator.service import CoordinatorService
from fedmq.shared.envelope import Envelope, Kind, encode
from fedmq.shared.models import initial_weights
from fedmq.shared.mqtt import Message
from fedmq.shared.topicmap import parse_topic_map

MAP = """
federation: f
model: {kind: softmax_regression, features: 3, classes: [0, 1]}
limits: {max_messages_per_node_s: 1, message_burst: 5}
tree:
  groups:
    g1: {nodes: [a]}
    g2: {nodes: [b]}
"""


def test_a_flood_under_a_nodes_id_elsewhere_does_not_silence_it():
    service = CoordinatorService(parse_topic_map(MAP))
    for _ in range(50):  # garbage on g2's topic under a's id: counted against that topic's sender only
        service.dispatch(Message("fedmq/v1/f/g2/_update/a", b"flood", False))
    assert service.rejections.total["rate limit"] == 45
    update = encode(Envelope(Kind.UPDATE, "f", 1, "a", 0, initial_weights(service.tm.model), samples=5))
    service.dispatch(Message("fedmq/v1/f/g1/_update/a", update, False))
    assert service.rejections.total["rate limit"] == 45  # a's own topic still has its budget
    assert len(service.groups[("g1",)].early) == 1  # taken as an update (kept until a round starts)


def test_retained_updates_and_chunks_are_refused_and_cleared():
    from fedmq.shared.chunks import split

    service = CoordinatorService(parse_topic_map(MAP))
    cleared = []
    service.link._send = lambda topic, payload, qos, retain: cleared.append((topic, payload, retain))
    update = encode(Envelope(Kind.UPDATE, "f", 1, "a", 0, initial_weights(service.tm.model), samples=5))
    service.link.inbox.put(Message("fedmq/v1/f/g1/_update/a", update, True))
    for i, frame in enumerate(split(update, 400)):
        service.link.inbox.put(Message(f"fedmq/v1/f/g1/_update/a/_chunk/{i}", frame, True))
    assert service.link.get(timeout=0) is None
    assert service.rejections.total["retained message"] == 1 + len(split(update, 400))
    assert all(payload == b"" and retain for _, payload, retain in cleared) and len(cleared) == 1 + len(
        split(update, 400)
    )
