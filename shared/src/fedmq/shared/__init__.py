"""fedmq.shared: the parts every fedmq process uses (protocol v1, topic map, MQTT link, data sources, model maths)."""

__version__ = "0.3.0"
PROTOCOL_VERSION = 1  # the major version: the "v" of envelopes and the "v1" level of topics
PROTOCOL_REVISION = "1.8"  # what this release speaks and understands (docs/protocol.md, "Revisions")
