"""Test helpers: write small federations (topic map, node configs, data) and run fedmq processes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import yaml

FED = "testfed"

# a small valid topic map (unit tests of the topic map and of what reads it)
GOOD_TOPIC_MAP = """\
federation: home
model:
  kind: softmax_regression
  features: 4
  classes: [0, 1]
rounds:
  rounds: 3
  quorum: 2
tree:
  nodes: [hub]
  groups:
    kitchen:
      nodes: [k1, k2]
    site-a:
      groups:
        building-1:
          admit: ["b1-*"]
          edge: true
"""



def blobs(n: int, seed: int, features: int = 8, classes: int = 3) -> "tuple[np.ndarray, np.ndarray]":
    """Separable Gaussian blobs: quick to learn, deterministic."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(0, 3, (classes, features))
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(0, 1, (n, features))
    return x.astype(np.float32), y


def write_federation(tmp: str, port: int, groups: Dict[str, List[str]], *, rounds: int = 3, deadline_s: float = 10,
                     quorum: "float | int" = 1.0, edge: Optional[List[str]] = None, checkpoint: bool = True,
                     extra_rounds: Optional[dict] = None, root_nodes: Optional[List[str]] = None,
                     extra: Optional[dict] = None, node_extra: Optional[dict] = None) -> Dict[str, str]:
    """Write fed.yaml plus one config and one NPZ per node; return {'topic_map': path, node: config path}.
    ``extra`` adds or replaces top-level sections of the topic map, ``node_extra`` keys of every node config."""
    os.makedirs(os.path.join(tmp, "data"), exist_ok=True)
    out: Dict[str, str] = {}
    tree: dict = {"groups": {}}
    if root_nodes:
        tree["nodes"] = list(root_nodes)
    all_nodes = [(g, n) for g, ns in groups.items() for n in ns] + [("", n) for n in root_nodes or []]
    for i, (g, n) in enumerate(all_nodes):
        x, y = blobs(60 + 10 * i, seed=i)
        data = os.path.join(tmp, "data", f"{n}.npz")
        np.savez(data, x=x, y=y)
        cfg = {"node_id": n, "federation": FED, "group": g, "broker": {"host": "127.0.0.1", "port": port},
               "data": {"kind": "npz", "path": data}, **(node_extra or {})}
        path = os.path.join(tmp, f"node-{n}.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(cfg, fh)
        out[n] = path
    for g, ns in groups.items():
        tree["groups"][g] = {"nodes": list(ns)}
        if edge and g in edge:
            tree["groups"][g]["edge"] = True
    xt, yt = blobs(300, seed=999)
    np.savez(os.path.join(tmp, "data", "test.npz"), x=xt, y=yt)
    policy = {"rounds": rounds, "deadline_s": deadline_s, "quorum": quorum, "min_nodes": 1, "local_epochs": 1,
              "batch_size": 16, "learning_rate": 0.1, "hop_margin_s": 1.0, "wait_for_nodes_s": 30}
    policy.update(extra_rounds or {})
    fed = {"federation": FED, "broker": {"host": "127.0.0.1", "port": port},
           "model": {"kind": "softmax_regression", "features": 8, "classes": [0, 1, 2]},
           "rounds": policy, "evaluation": {"kind": "npz", "path": os.path.join(tmp, "data", "test.npz")},
           "tree": tree}
    fed.update(extra or {})
    if checkpoint:
        fed["checkpoint"] = {"dir": os.path.join(tmp, "ckpt")}
    out["topic_map"] = os.path.join(tmp, "fed.yaml")
    with open(out["topic_map"], "w") as fh:
        yaml.safe_dump(fed, fh, sort_keys=False)
    return out


def fedmq(args: List[str], log_path: str) -> subprocess.Popen:
    """Start ``fedmq ARGS`` as a child process, output to ``log_path``."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "fedmq.shared.cli", *args], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def ctrl_c_default() -> None:
    """``preexec_fn`` for a child a test stops with Ctrl-C (SIGINT): its default handling back, whatever the
    test run inherited (a shell starts background jobs with SIGINT ignored, and children keep that)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(procs: List[subprocess.Popen]) -> None:
    """Terminate, then kill, every process."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def checkpoint_file(directory, name: str) -> "str | None":
    """Path of ``name`` (state.json, model.fmq, optimizer.fmq) in the current checkpoint snapshot, or None."""
    from fedmq.coordinator.checkpoint import CheckpointError, current_dir

    try:
        snapshot = current_dir(str(directory))
    except CheckpointError:
        return None
    return os.path.join(snapshot, name) if snapshot else None


def checkpoint_state(directory) -> "dict | None":
    """The current checkpoint's state.json, or None before the first one."""
    import json

    path = checkpoint_file(directory, "state.json")
    if path is None:
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def rewrite_yaml(path, change) -> None:
    """Load a YAML file, let ``change`` edit it in place, write it back."""
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    change(cfg)
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)


def dockerfile_steps(path: str) -> list:
    """A Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines, cont = [], ""
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cont += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            lines.append(cont.strip())
            cont = ""
    return [(ln.split(None, 1)[0], ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Does something accept TCP connections on ``port``?"""
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


VENV_PIP = "/opt/fedmq/venv/bin/pip install "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def deploy_md_install() -> list:
    """The arguments of the coordinator's pip install in docs/deploy.md."""
    text = open(os.path.join(ROOT, "docs", "deploy.md"), encoding="utf-8").read()
    lines = [ln for ln in text.splitlines() if VENV_PIP in ln]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split(VENV_PIP, 1)[1])


def wait_online(port: int, nodes: Dict[str, tuple], timeout: float = 20) -> None:
    """Wait until the broker holds an "online" status for each node (id -> group path): tests start the
    coordinator after it, so that a node still starting on a busy machine does not miss round 1."""
    from fedmq.shared.messages import Status
    from fedmq.shared.mqtt import MqttLink
    from fedmq.shared.topicmap import BrokerSettings
    from fedmq.shared.topics import Topics

    t = Topics(FED)
    watcher = MqttLink(f"watch-{time.time()}", BrokerSettings(port=port), persistent=False)
    for node, group in nodes.items():
        watcher.subscribe(t.status(group, node))
    watcher.start()
    online, end = set(), time.monotonic() + timeout
    try:
        while online != set(nodes) and time.monotonic() < end:
            msg = watcher.get(0.2)
            if msg is not None and Status.decode(msg.payload).state == "online":
                online.add(Status.decode(msg.payload).node)
    finally:
        watcher.stop()
    assert online == set(nodes), f"only {sorted(online)} came online"


def start_nodes(paths: Dict[str, str], names: List[str], tmp_path, timeout: float = 60) -> Dict[str, subprocess.Popen]:
    """Start ``fedmq node run`` for each named node (logs in tmp_path/<node>.log) and, on a plain broker, wait
    until each has announced itself online: a coordinator started next finds them all, even on a busy machine."""
    procs = {n: fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for n in names}
    configs = {n: yaml.safe_load(open(paths[n])) for n in names}
    if names and all(not c["broker"].get("tls") and not c["broker"].get("username") for c in configs.values()):
        port = configs[names[0]]["broker"]["port"]
        group = {n: tuple(c.get("group", "").split("/")) if c.get("group") else () for n, c in configs.items()}
        try:
            wait_online(port, group, timeout)
        except AssertionError:
            stop(list(procs.values()))
            raise
    return procs


TWO_HOMES = {"home1": ["a1", "a2"], "home2": ["b1", "b2"]}


def tflite_federation(tmp_path, port, trainer, rounds=3):  # type: ignore[no-untyped-def]
    """A federation of TWO_HOMES whose model kind is tflite, every node with ``trainer``."""
    paths = write_federation(str(tmp_path), port, TWO_HOMES, rounds=rounds)
    fed = yaml.safe_load(open(paths["topic_map"]))
    fed["model"] = {"kind": "tflite", "features": 8, "classes": [0, 1, 2], "hidden": [6], "seed": 4,
                    "options": {"output": "softmax", "momentum": 0.5}}
    yaml.safe_dump(fed, open(paths["topic_map"], "w"))
    for n in [n for ns in TWO_HOMES.values() for n in ns]:
        cfg = yaml.safe_load(open(paths[n]))
        cfg["trainer"] = trainer
        yaml.safe_dump(cfg, open(paths[n], "w"))
    return paths
