"""Monitoring pieces: richer statuses, history rows, the monitor's view, the metrics' names, JSON logs, the
Grafana dashboard's queries."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest

from fedhelp import ROOT
from fedmq.coordinator.metrics import ProcessMetrics
from fedmq.coordinator.monitor.status_cmd import render
from fedmq.coordinator.monitor.view import FederationView, summary_line
from fedmq.coordinator.tree import Membership
from fedmq.shared.logs import Context, JsonFormatter
from fedmq.shared.messages import MessageError, Status, decode_history, encode_history, encode_metrics, history_rows
from fedmq.shared.mqtt import Message
from fedmq.shared.topicmap import TopicMapError, parse_topic_map

TM = """
federation: f
model: {kind: softmax_regression, features: 2, classes: [0, 1]}
metrics: {address: "127.0.0.1:0"}
tree:
  groups:
    home1: {nodes: [a1, a2]}
    home2: {nodes: [b1]}
"""


def test_status_carries_last_seen_round_trainer_and_versions():
    s = Status("a1", "online", samples=5, trainer="numpy", last_seen=1800000000.5, last_round=7, version="0.2.0",
               protocol="1.7")
    assert Status.decode(s.encode()) == s
    assert Status.decode(Status("a1", "offline").encode()) == Status("a1", "offline")
    for bad in ({"last_seen": -1}, {"last_round": "x"}, {"version": "x" * 40}, {"last_seen": True}):
        obj = {"v": 1, "node": "a1", "state": "online", **bad}
        with pytest.raises(MessageError):
            Status.decode(json.dumps(obj).encode())


def test_history_rows_keep_the_key_figures_and_count_rejections():
    history = [{"round": r, "accuracy": 0.5 + r / 10, "loss": 1.0 / r, "rejected": {"stale round": r}, "problems": None,
                "bytes_up": 100, "timestamp": 1.0 + r, "accuracy_source": "held_out"} for r in range(1, 5)]
    rows = history_rows(history, limit=3)
    assert [r["round"] for r in rows] == [2, 3, 4] and rows[-1]["rejected"] == 4 and "problems" not in rows[-1]
    assert decode_history(encode_history(rows)) == rows
    with pytest.raises(MessageError):
        decode_history(b'{"v":1,"rounds":[{"round":-1}]}')


def _view() -> FederationView:
    view = FederationView(parse_topic_map(TM))
    t = view.topics
    view.feed(Message(t.status(("home1",), "a1"), Status("a1", "online", samples=9, trainer="numpy", last_round=3,
                                                         problem="too few samples").encode(), True))
    view.feed(Message(t.status(("home2",), "b1"), Status("b1", "offline").encode(), True))
    view.feed(Message(t.round_state(), json.dumps({"v": 1, "state": "running", "mode": "sync", "round": 4,
                                                   "rounds_total": 10, "selected": 3, "answered": 1,
                                                   "deadline_at": 4e9}).encode(), True))
    view.feed(
        Message(t.history(), encode_history([{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.6}]), True)
    )
    view.feed(
        Message(
            t.metrics(),
            encode_metrics(
                {"round": 3, "accuracy": 0.7, "accuracy_source": "held_out", "rejected": {"duplicate": 2}, "updates": 3}
            ),
            True,
        )
    )
    return view


def test_the_view_follows_statuses_round_history_and_summaries():
    view = _view()
    snap = view.snapshot()
    nodes = {n["node"]: n for n in snap["nodes"]}
    assert nodes["a1"]["state"] == "online" and nodes["a1"]["last_round"] == 3 and nodes["a2"]["state"] == "unknown"
    assert nodes["b1"]["state"] == "offline" and snap["groups"] == ["", "home1", "home2"]
    assert [h["round"] for h in snap["history"]] == [1, 2, 3]  # the summary extends the retained history
    assert "a1: too few samples" in snap["problems"] and "b1: offline" in snap["problems"]
    assert "last round rejected duplicate: 2" in snap["problems"]
    assert summary_line(snap).startswith("round 4 of 10: 1 of 3 updates in, deadline in")
    text = render(snap)
    assert "home1" in text and "a1" in text and "(held-out)" in text and "PROBLEM: too few samples" in text
    before = view.version
    assert not view.feed(Message(view.topics.status(("home1",), "a2"), b"{not json", True))
    assert view.version == before and "unreadable" in " ".join(view.snapshot()["problems"])
    assert not view.feed(Message(view.topics.status(("home1",), "a2"), Status("a1", "online").encode(), True))


def test_metrics_names_follow_prometheus_conventions_and_the_grafana_dashboard_uses_them():
    tm = parse_topic_map(TM)
    m = ProcessMetrics(tm, Membership(tm), list(tm.groups()))
    m.rejected_message("duplicate", m.topics.update(("home1",), "a1"))
    m.round_applied(
        {
            "round": 1,
            "seconds": 0.2,
            "model_version": 1,
            "accuracy": 0.5,
            "loss": 0.7,
            "epsilon": 1.5,
            "accuracy_source": "held_out",
            "bytes_up": 10,
            "bytes_down": 5,
        }
    )
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    names = set(re.findall(r"(?m)^(fedmq_[a-z_]+)", text))
    assert {
        "fedmq_rounds_applied_total",
        "fedmq_updates_accepted_total",
        "fedmq_messages_rejected_total",
        "fedmq_round_duration_seconds_bucket",
        "fedmq_checkpoint_age_seconds",
        "fedmq_nodes_online",
    } <= names
    counters = re.findall(r"(?m)^# TYPE (\S+) counter", text)
    assert counters and all(c.endswith("_total") for c in counters)  # counters end in _total
    assert not re.search(r'node="', text)  # no per-node series unless asked
    assert 'fedmq_updates_received_total{federation="f",group="home1"} 1.0' in text  # a rejected update arrived
    assert 'fedmq_model_accuracy_ratio{federation="f",source="held_out"} 0.5' in text
    assert "_created" not in text  # no creation-time series beside the counters
    assert re.search(r'fedmq_build_info\{.*protocol="[0-9.]+".*version="[0-9.]+"', text), text
    # every reason has a series from the start, at 0 until its first rejection
    assert 'fedmq_messages_rejected_total{federation="f",reason="bad signature"} 0.0' in text
    assert 'fedmq_messages_rejected_total{federation="f",reason="duplicate"} 1.0' in text
    board = json.load(open(os.path.join(ROOT, "deploy", "grafana", "fedmq-dashboard.json")))
    used = {n for p in board["panels"] for t in p["targets"] for n in re.findall(r"fedmq_[a-z_]+", t["expr"])}
    base = {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in names}
    assert used and all(n in names or n in base for n in used), used - names


def test_metrics_address_is_validated_with_the_key_and_fix():
    with pytest.raises(TopicMapError, match="metrics.address.*host:port"):
        parse_topic_map(TM.replace('"127.0.0.1:0"', '"localhost"'))


def test_json_logs_carry_node_group_and_round():
    log = logging.getLogger("fedmq.node.gw-test")
    log.addFilter(Context(node="gw-test", group="home1", federation="f"))
    record = log.makeRecord(log.name, logging.INFO, __file__, 1, "round %d: trained", (12,), None)
    for f in log.filters:
        f.filter(record)
    out = json.loads(JsonFormatter().format(record))
    assert out == {
        "time": out["time"],
        "level": "info",
        "logger": "fedmq.node.gw-test",
        "message": "round 12: trained",
        "node": "gw-test",
        "group": "home1",
        "federation": "f",
        "round": 12,
    }
    group = logging.getLogger("fedmq.group.site/b2").makeRecord(
        "fedmq.group.site/b2", logging.WARNING, "", 1, "rejected x: duplicate", (), None
    )
    assert json.loads(JsonFormatter().format(group))["group"] == "site/b2"


def test_every_reason_counted_in_the_code_is_in_the_fixed_vocabulary():
    """The rejection counter starts every reason at 0, so the reasons the code counts must all be listed."""
    from fedmq.coordinator.rejections import REASONS

    found = set()
    for pkg in ("coordinator", "shared"):
        for base, _, files in os.walk(os.path.join(ROOT, pkg, "src")):
            for name in files:
                if name.endswith(".py"):
                    text = open(os.path.join(base, name), encoding="utf-8").read()
                    found |= set(re.findall(r'reject\(\s*"([^"]+)"', text))
                    found |= set(re.findall(r'SignatureError\(\s*"([^"]+)"', text))
                    found |= set(re.findall(
                        r'(?:EnvelopeError|EnvelopeRefused)\([^()]*(?:\([^()]*\)[^()]*)*, "([^"]+)"\)', text))
                    if name in ("group.py", "async_group.py", "edge_schedule.py"):  # (failed, reason, detail) checks
                        found |= set(re.findall(r'\(\s*[^,()]+,\s*"([a-z][a-z ]+)",\s*(?:f?"|\()', text))
                        found |= set(re.findall(r'(?m)^\s+"([a-z][a-z ]+)",\n\s+(?:f?"|\()', text))
    found -= {"unreadable keys"}  # a keys.json problem is logged, never counted as a message's rejection
    assert found and found <= set(REASONS), found - set(REASONS)


def test_what_a_nodes_stream_dropped_reaches_status_view_text_and_metrics():
    from prometheus_client import generate_latest

    from fedmq.coordinator.monitor.status_cmd import stream_note

    data = {"dropped_rows": 3, "unlabelled_rows": 40, "dropped": {"not JSON": 2, "field missing": 1}}
    status = Status("a1", "online", samples=5, source="mqtt", live=True, data=data)
    assert Status.decode(status.encode()).data == data
    with pytest.raises(MessageError):
        Status.decode(Status("a1", "online", data={"dropped": {str(i): 1 for i in range(40)}}).encode())
    view = _view()
    view.feed(Message(view.topics.status(("home1",), "a1"), status.encode(), True))
    a1 = next(n for n in view.snapshot()["nodes"] if n["node"] == "a1")
    assert a1["data"] == data
    note = stream_note(a1["data"])
    assert "dropped 3 rows, 3 readings (field missing 1, not JSON 2)" in note and "40 rows unlabelled" in note
    assert note in render(view.snapshot())
    tm = parse_topic_map(TM)
    m = ProcessMetrics(tm, Membership(tm), list(tm.groups()))
    m.watch_presence(lambda: ["a1"], lambda node: {**data, "dropped": {**data["dropped"], "made up": 7}})
    m.refresh()
    text = generate_latest(m.registry).decode()
    assert 'fedmq_stream_readings_dropped{federation="f",group="home1",reason="not JSON"} 2.0' in text
    assert 'fedmq_stream_readings_dropped{federation="f",group="home1",reason="other"} 7.0' in text
    assert 'fedmq_stream_rows{federation="f",group="home1",kind="unlabelled"} 40.0' in text
