"""Hostile input: property-based fuzzing of every decoder and the topic-map loader. Each must either
accept an input or reject it with its own error type and a reason: no other exception, no hang, no
unbounded allocation."""

import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmq.node.config import load_node_config
from fedmq.shared.envelope import PREFIX, Envelope, EnvelopeError, Kind, decode, encode
from fedmq.shared.messages import Control, MessageError, Status, decode_metrics
from fedmq.shared.topicmap import TopicMapError, parse_topic_map

FAST = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
VALID = encode(Envelope(Kind.UPDATE, "f", 1, "n1", 0, {"coef": np.ones((3, 4), np.float32),
                                                       "intercept": np.zeros(3, np.float32)}, samples=10))


def seal(prefix_and_body: bytes) -> bytes:
    return prefix_and_body + struct.pack("<I", zlib.crc32(prefix_and_body))


def framed(header: bytes, body: bytes = b"", kind: int = 2) -> bytes:
    return seal(PREFIX.pack(b"FDMQ", 1, kind, 0, len(header), len(body)) + header + body)


@FAST
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_mutations(mutations):
    data = bytearray(VALID)
    for pos, value in mutations:
        data[pos] = value
    try:
        decode(bytes(data))
    except EnvelopeError:
        pass
    try:  # the same mutations with a valid checksum reach the parser behind it
        decode(seal(bytes(data[:-4])))
    except EnvelopeError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
header_fields = st.fixed_dictionaries(
    {},
    optional={
        "federation": json_values,
        "round": json_values,
        "attempt": json_values,
        "sender": json_values,
        "model_version": json_values,
        "codec": json_values,
        "samples": json_values,
        "metrics": json_values,
        "meta": json_values,
        "tensors": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": json_values,
                    "dtype": st.sampled_from(["f4", "f8", "f2", "i1", "u1", "i4", "i8", "O", "<f4"]) | json_values,
                    "shape": st.lists(st.integers(-3, 2**40), max_size=9) | json_values,
                },
            ),
            max_size=4,
        ),
    },
)


@FAST
@given(header_fields, st.binary(max_size=256), st.integers(0, 6))
def test_structured_headers(header, body, kind):
    try:
        env = decode(framed(json.dumps(header).encode(), body, kind))
    except EnvelopeError:
        return
    assert isinstance(env.tensors, dict)  # accepted: then it is fully consistent
    assert sum(t.nbytes for t in env.tensors.values()) == len(body)


def test_huge_shape_claims_allocate_nothing():
    header = json.dumps(
        {
            "federation": "f",
            "round": 1,
            "sender": "n",
            "model_version": 0,
            "samples": 1,
            "tensors": [{"name": "w", "dtype": "f8", "shape": [2**31, 2**31]}],
        }
    ).encode()
    tracemalloc.start()
    try:
        decode(framed(header, b"\0" * 64))
    except EnvelopeError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


@FAST
@given(st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_json_messages(payload):
    for decoder in (Control.decode, Status.decode, decode_metrics):
        try:
            decoder(payload)
        except MessageError:
            pass


@FAST
@given(
    st.fixed_dictionaries(
        {"v": st.just(1)},
        optional={
            "type": st.sampled_from(["start", "close", "done", "x"]) | json_values,
            "round": json_values,
            "attempt": json_values,
            "model_version": json_values,
            "deadline_at": json_values,
            "selected": json_values,
            "train": json_values,
            "outcome": json_values,
            "state": json_values,
            "node": json_values,
        },
    )
)
def test_structured_json_messages(obj):
    payload = json.dumps(obj).encode()
    for decoder in (Control.decode, Status.decode):
        try:
            decoder(payload)
        except MessageError:
            pass


@FAST
@given(st.text(max_size=300))
def test_topic_map_text(text):
    try:
        parse_topic_map(text, "fuzz.yaml")
    except TopicMapError as exc:
        assert all(i.file == "fuzz.yaml" and i.message for i in exc.issues)


tree = st.recursive(
    st.none() | st.text(max_size=8) | st.integers() | st.booleans(),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.sampled_from(["nodes", "admit", "groups", "edge", "g1", "a+b", "_x", "n1"]), c, max_size=3)
    ),
    max_leaves=12,
)
sections = st.fixed_dictionaries(
    {},
    optional={
        "federation": st.sampled_from(["f", "a/b", "", "#", "ok-1"]) | tree,
        "model": st.fixed_dictionaries(
            {},
            optional={
                "kind": st.sampled_from(["softmax_regression", "mlp", "tflite", "bogus"]) | tree,
                "features": st.integers(-5, 10**8) | tree,
                "classes": tree,
                "hidden": tree,
                "options": tree,
            },
        ),
        "rounds": st.dictionaries(
            st.sampled_from(
                [
                    "rounds",
                    "quorum",
                    "min_nodes",
                    "max_nodes",
                    "fraction",
                    "deadline_s",
                    "hop_margin_s",
                    "learning_rate",
                    "zzz",
                ]
            ),
            st.integers(-3, 100) | st.floats(allow_nan=True) | tree,
            max_size=5,
        ),
        "limits": tree,
        "broker": tree,
        "tree": tree,
        "checkpoint": tree,
        "evaluation": tree,
    },
)


@FAST
@given(sections)
def test_topic_map_structures(doc):
    try:
        parse_topic_map(yaml.safe_dump(doc), "fuzz.yaml")
    except TopicMapError as exc:
        assert all(i.message for i in exc.issues)


@settings(max_examples=150, deadline=2000)
@given(st.text(max_size=200))
def test_node_config_text(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("cfg") / "node.yaml"
    p.write_text(text)
    try:
        load_node_config(str(p))
    except TopicMapError:
        pass


@pytest.mark.parametrize("target", ["envelope", "messages", "topic_map"])
def test_atheris_coverage_guided(target, tmp_path):
    pytest.importorskip("atheris")
    seeds = tmp_path / "corpus"
    seeds.mkdir()
    (seeds / "valid").write_bytes(
        VALID
        if target == "envelope"
        else b'{"v":1,"type":"close","round":1,"outcome":"applied"}'
        if target == "messages"
        else b"federation: f\nmodel: {kind: mlp, features: 2}\ntree: {}\n"
    )
    script = os.path.join(os.path.dirname(__file__), "..", "fuzz", "atheris_targets.py")
    r = subprocess.run(
        [sys.executable, script, target, "-runs=20000", "-max_len=2048", str(seeds)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 20000 runs" in r.stderr
