"""Writes the demo's files: per-node data and configs, and the federation's topic map."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import yaml

from fedmq.coordinator.demo.dataset import Split, dirichlet_split

HIDDEN = {"mlp": [32], "mlp_classifier": [32], "tflite-mlp": [32]}
LEARNING_RATE = {"softmax_regression": 0.5, "mlp": 0.2, "sgd_classifier": 0.01, "mlp_classifier": 0.2,
                 "tflite-logreg": 0.5, "tflite-mlp": 0.2}


def model_spec(model: str, features: int, classes: List[Union[int, str]], seed: int) -> dict:
    """The topic map's ``model`` section for a demo model name (tflite-* are the ``tflite`` kind)."""
    spec: dict = {"kind": "tflite" if model.startswith("tflite-") else model, "features": features,
                  "classes": classes, "seed": seed}
    if model in HIDDEN:
        spec["hidden"] = HIDDEN[model]
    if model.startswith("tflite-"):
        spec["options"] = {"output": "softmax"}
    return spec


@dataclass
class DemoLayout:
    """Paths of everything the demo wrote."""

    topic_map: str
    node_configs: List[str]
    node_ids: List[str]


def write_federation(workdir: str, train: Split, test: Split, *, nodes: int, groups: int, rounds: int, alpha: float,
                     seed: int, model: str, port: int, deadline_s: float, trainer: str = "auto",
                     parts: Optional[List[Split]] = None, training: Optional[dict] = None,
                     extra: Optional[dict] = None, node_extras: Optional[List[dict]] = None) -> DemoLayout:
    """Write one NPZ and one node config per node, and the topic map. The nodes' data is ``parts`` when
    given (one per node), else ``train`` split non-IID; ``training`` overrides the local training settings
    ``extra`` adds top-level topic map sections (compression, transport, strategy) and ``node_extras``
    keys to each node's config (simulated stragglers and slow nodes)."""
    x, y = train
    if parts is None:
        parts = [(x[idx], y[idx]) for idx in dirichlet_split(y, nodes, alpha, seed)]
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir, exist_ok=True)
    tree: dict = {"groups": {}}
    ids, configs = [], []
    for i, (px, py) in enumerate(parts):
        home = f"home{i % groups + 1}"
        node = f"{home}-node{i // groups + 1:02d}"
        np.savez(os.path.join(data_dir, f"{node}.npz"), x=px, y=py)
        tree["groups"].setdefault(home, {"nodes": []})["nodes"].append(node)
        cfg = {"node_id": node, "federation": "demo", "group": home, "seed": seed, "trainer": trainer,
               "cache_dir": os.path.join(workdir, "cache", node),
               "broker": {"host": "127.0.0.1", "port": port},
               "data": {"kind": "npz", "path": os.path.join(data_dir, f"{node}.npz")},
               **(node_extras[i] if node_extras else {})}
        path = os.path.join(workdir, f"node-{node}.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)
        ids.append(node)
        configs.append(path)
    np.savez(os.path.join(data_dir, "test.npz"), x=test[0], y=test[1])
    spec = model_spec(model, int(x.shape[1]), [c.item() for c in np.unique(y)], seed)
    fed = {
        "federation": "demo",
        "broker": {"host": "127.0.0.1", "port": port},
        "model": spec,
        "rounds": {"rounds": rounds, "fraction": 1.0, "min_nodes": max(1, nodes // 2), "deadline_s": deadline_s,
                   "quorum": 0.6, "local_epochs": 2, "batch_size": 16, "learning_rate": LEARNING_RATE[model],
                   "hop_margin_s": 1.0, "wait_for_nodes_s": 60, "seed": seed, **(training or {})},
        "evaluation": {"kind": "npz", "path": os.path.join(data_dir, "test.npz")},
        "checkpoint": {"dir": os.path.join(workdir, "checkpoints")},
        **(extra or {}),
        "tree": tree,
    }
    tm_path = os.path.join(workdir, "federation.yaml")
    with open(tm_path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(fed, fh, sort_keys=False)
    return DemoLayout(topic_map=tm_path, node_configs=configs, node_ids=ids)


def set_port(layout: DemoLayout, port: int) -> None:
    """Write the broker's port into every config of the demo."""
    for path in [layout.topic_map, *layout.node_configs]:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
        cfg["broker"]["port"] = port
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)


def secure_federation(layout: DemoLayout, security_dir: str, port: int) -> None:
    """Point every config of the demo at the secured broker: mutual TLS and end-to-end signatures."""
    from fedmq.broker.provision import client_config

    for pid, path in [("coordinator", layout.topic_map), *zip(layout.node_ids, layout.node_configs)]:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
        sections = client_config(security_dir, pid)
        cfg["broker"].update(port=port, **sections["broker"])
        cfg["security"] = sections["security"]
        if pid == "coordinator":
            cfg["security"]["signatures"] = True
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)
