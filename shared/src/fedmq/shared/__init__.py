"""fedmq.shared: the parts every fedmq process uses (protocol v1, topic map, MQTT link, data sources, model maths)."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
