"""A node's YAML configuration (see docs/topic-map.md, section "Node configuration")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

from fedmq.node.serve.config import ServeConfig, read_serve
from fedmq.node.trainers.registry import trainer_names
from fedmq.shared.data import source_class
from fedmq.shared.topicmap import BrokerSettings, DataRef, Limits, SecuritySettings
from fedmq.shared.topicmap.loader import LEVEL_FIX, read_broker, read_data_ref, read_security
from fedmq.shared.topicmap.reader import load_file
from fedmq.shared.topics import level_problem

NODE_KEYS = (
    "node_id",
    "federation",
    "group",
    "broker",
    "data",
    "trainer",
    "max_message_bytes",
    "max_payload_bytes",
    "seed",
    "cache_dir",
    "security",
    "min_samples",
    "simulate_delay_s",
    "simulate_straggler",
    "simulate_attack",
    "serve",
)


@dataclass(frozen=True)
class NodeConfig:
    """Who the node is, where the broker is, where its data is and which trainer it uses."""

    file: str
    node_id: str
    federation: str
    group: Tuple[str, ...]
    broker: BrokerSettings
    data: DataRef
    trainer: str = "auto"
    max_message_bytes: int = Limits.max_message_bytes
    max_payload_bytes: Optional[int] = None
    seed: int = 0
    cache_dir: str = ".fedmq-cache"
    security: SecuritySettings = SecuritySettings()
    min_samples: int = 1  # fewer samples than this is a data problem (default: 10 for live sources, else 1)
    simulate_delay_s: float = 0.0  # testing and benchmarks only: sleep this long before every training
    simulate_straggler: float = 0.0  # testing and benchmarks only: chance per round of having time for less work
    # testing and benchmarks only: send start + scale x (the honest change), claiming `samples` samples
    simulate_attack: Optional[Tuple[float, Optional[int]]] = None
    serve: Optional[ServeConfig] = None  # predictions on the home broker (docs/serving.md)


def _group_problem(v: object) -> Optional[str]:
    if not isinstance(v, str):
        return "must be a string"
    for level in v.split("/") if v else []:
        problem = level_problem(level)
        if problem:
            return f"level {level!r} {problem}"
    return None


def load_node_config(file: str) -> NodeConfig:
    """Read and validate a node configuration; raise TopicMapError listing every issue."""
    data, r = load_file(file)
    m = r.mapping(data, "", 1, NODE_KEYS, required=("node_id", "federation", "data"))
    if m is None:
        r.stop()
    node_id = r.value(m, "node_id", "", str, "", check=level_problem, fix=LEVEL_FIX)
    federation = r.value(m, "federation", "", str, "", check=level_problem, fix=LEVEL_FIX)
    group = r.value(
        m,
        "group",
        "",
        str,
        "",
        check=_group_problem,
        fix="a slash-separated group path from the topic map, e.g. home1/kitchen ('' for the root)",
    )
    base = os.path.dirname(os.path.abspath(file))
    broker = read_broker(r, m.get("broker"), "broker", r.line_of(m, "broker"), base)
    data_ref = read_data_ref(r, m.get("data"), "data", r.line_of(m, "data"), base)
    trainer = r.value(m, "trainer", "", str, "auto", choices=trainer_names())
    max_bytes = r.value(m, "max_message_bytes", "", int, Limits.max_message_bytes, minimum=1024)
    max_payload = r.value(
        m,
        "max_payload_bytes",
        "",
        int,
        None,
        minimum=1024,
        fix="the largest MQTT payload this device or its broker takes, e.g. 131072",
    )
    seed = r.value(m, "seed", "", int, 0, minimum=0)
    cache_dir = os.path.join(base, r.value(m, "cache_dir", "", str, ".fedmq-cache"))
    security = read_security(r, m.get("security"), r.line_of(m, "security"), file, ("keys", "signing_key"))
    live = data_ref is not None and getattr(source_class(data_ref.kind), "live", False)
    min_samples = r.value(
        m,
        "min_samples",
        "",
        int,
        10 if live else 1,
        minimum=1,
        fix="the fewest samples this node trains on, e.g. min_samples: 50",
    )
    delay = r.value(
        m,
        "simulate_delay_s",
        "",
        float,
        0.0,
        minimum=0.0,
        maximum=3600.0,
        fix="seconds to sleep before each training, to emulate a slow device (testing only)",
    )
    straggler = r.value(
        m,
        "simulate_straggler",
        "",
        float,
        0.0,
        minimum=0.0,
        maximum=1.0,
        fix="the chance per round that this node has time for only part of its epochs (testing only)",
    )
    attack = (
        r.mapping(m.get("simulate_attack"), "simulate_attack", r.line_of(m, "simulate_attack"), ("scale", "samples"))
        if m.get("simulate_attack") is not None
        else None
    )
    simulate_attack = (
        None
        if attack is None
        else (
            r.value(attack, "scale", "simulate_attack", float, 1.0),
            r.value(attack, "samples", "simulate_attack", int, None, minimum=1),
        )
    )
    serve = read_serve(r, m.get("serve"), r.line_of(m, "serve"), base, node_id, data_ref)
    r.raise_if_any()
    assert data_ref is not None  # data is required: its absence is an issue raised just above
    return NodeConfig(
        file=file,
        node_id=node_id,
        federation=federation,
        group=tuple(group.split("/")) if group else (),
        broker=broker,
        data=data_ref,
        trainer=trainer,
        max_message_bytes=max_bytes,
        max_payload_bytes=max_payload,
        seed=seed,
        cache_dir=cache_dir,
        security=security,
        min_samples=min_samples,
        simulate_delay_s=delay,
        simulate_straggler=straggler,
        simulate_attack=simulate_attack,
        serve=serve,
    )
