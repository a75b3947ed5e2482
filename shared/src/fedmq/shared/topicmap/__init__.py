"""The YAML topic map: one file describes a federation (see docs/topic-map.md)."""

from fedmq.shared.topicmap.errors import ConfigIssue, TopicMapError
from fedmq.shared.topicmap.loader import load_topic_map, parse_topic_map
from fedmq.shared.topicmap.model import (
    BrokerSettings,
    Compression,
    DataRef,
    Group,
    Limits,
    ModelSpec,
    Privacy,
    RoundPolicy,
    SecuritySettings,
    Strategy,
    TlsSettings,
    TopicMap,
    Transport,
)

__all__ = [
    "BrokerSettings",
    "Compression",
    "ConfigIssue",
    "DataRef",
    "Group",
    "Limits",
    "ModelSpec",
    "Privacy",
    "RoundPolicy",
    "SecuritySettings",
    "Strategy",
    "TlsSettings",
    "TopicMap",
    "TopicMapError",
    "Transport",
    "load_topic_map",
    "parse_topic_map",
]
