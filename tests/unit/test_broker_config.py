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
    assert "persistence true" in out.read_text() and "persistence_location /var/lib/fedmq/mosquitto/" in out.read_text()
    assert subprocess.run(cmd + ["--persistence-dir", "none"], capture_output=True).returncode == 0
    assert "persistence false" in out.read_text()


def test_audit_turns_on_the_level_that_logs_denials_and_the_report_reads_them():
    from fedmq.broker.denials import denials, report

    assert "log_type debug" in render_config(BrokerConfig(audit=True))
    assert "log_type debug" not in render_config(BrokerConfig())
    log = ["1795812896: Denied PUBLISH from a1 (d0, q1, r0, m1, 'fedmq/v1/f/_model', ... (2 bytes))",
           "1795812896: Sending PUBACK to a1 (m1, rc135)",
           "1795812897: Denied PUBLISH from a1 (d0, q1, r0, m2, 'fedmq/v1/f/h/_update/b1', ... (5 bytes))",
           "1795812898: Denied PUBLISH from a1 (d0, q1, r0, m3, 'fedmq/v1/f/_model', ... (2 bytes))",
           "1795812899: Denied PUBLISH from b2 (d0, q0, r1, m0, 'x', ... (0 bytes))"]
    found = denials(log)
    assert found["a1"][("PUBLISH", "fedmq/v1/f/_model")] == 2 and sum(found["b2"].values()) == 1
    text = report(found, top=1)
    assert text.splitlines()[0] == "a1: 3 refused" and "... and 1 other topics" in text
    assert "no denials" in report({})
