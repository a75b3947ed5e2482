"""mosquitto.conf rendering follows the platform facts (no silent QoS 1 drops, packet size cap)."""

import subprocess
import sys

from fedmq.broker.config import BrokerConfig, render_config
from fedmq.shared.topicmap import parse_topic_map

MAP = """
federation: f
broker: {port: 18830}
model: {kind: softmax_regression, features: 2, classes: [a, b]}
limits: {max_message_bytes: 65536}
tree: {nodes: [n1]}
"""


def test_render_from_topic_map():
    text = render_config(BrokerConfig.for_topic_map(parse_topic_map(MAP), persistence_dir="/var/lib/x"))
    lines = text.splitlines()
    assert "listener 18830 127.0.0.1" in lines
    assert "max_queued_messages 0" in lines  # the default 1000 silently drops QoS 1
    assert any(line.startswith("max_packet_size 66") for line in lines)
    assert "message_size_limit" not in text  # breaks paho under MQTT v5
    assert "persistence true" in lines and "persistence_location /var/lib/x/" in lines


def test_render_cli(tmp_path):
    p = tmp_path / "fed.yaml"
    p.write_text(MAP)
    out = tmp_path / "m.conf"
    r = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "broker", "render", str(p), "--out", str(out),
                        "--port", "1999"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "listener 1999 127.0.0.1" in out.read_text()


def test_render_keeps_sessions_across_broker_restarts_by_default(tmp_path):
    p = tmp_path / "fed.yaml"
    p.write_text(MAP)
    out = tmp_path / "m.conf"
    cmd = [sys.executable, "-m", "fedmq.shared.cli", "broker", "render", str(p), "--out", str(out)]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert "persistence true" in out.read_text() and "persistence_location /var/lib/mosquitto/" in out.read_text()
    assert subprocess.run(cmd + ["--persistence-dir", "none"], capture_output=True).returncode == 0
    assert "persistence false" in out.read_text()
