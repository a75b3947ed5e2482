"""Checkpoints: the global model (with its feature scaling) and the server optimizer's moments (protocol
v1 envelope files) and the round state (JSON: rounds, history, the privacy accountant's events, the
scaling), written after every applied round as one unit: a snapshot directory, filled and fsynced under
a temporary name, renamed into place, and then named in ``CURRENT`` (written and renamed atomically).
Whatever moment the process dies, ``CURRENT`` names a complete snapshot: the last one, or the one before.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional

import numpy as np

from fedmq.shared.envelope import Envelope, EnvelopeError, Kind, decode, encode
from fedmq.shared.files import fsync_dir, write_atomic
from fedmq.shared.models import Weights, check_weights, expected_shapes
from fedmq.shared.saved_model import CURRENT, MODEL, STATE, ModelFileError, current_snapshot
from fedmq.shared.scaling import Scaling
from fedmq.shared.topicmap import ModelSpec

OPTIMIZER = "optimizer.fmq"
MOMENTS = ("m", "v")  # the server optimizer's tensors are named "<moment>/<model tensor>"
LOCK = ".lock"  # held (flock) by the coordinator that owns the directory; it holds that coordinator's pid


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used or written; the message names the file and the fix."""


@dataclass
class RoundState:
    """Where the federation stands: rounds applied, model version, the history of round summaries, the
    [sampling rate, noise multiplier] of every round the DP accountant composed, and the server optimizer's
    moments."""

    rounds_done: int = 0
    model_version: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    dp_events: List[List[float]] = field(default_factory=list)
    optimizer: Weights = field(default_factory=dict)
    scaling: Optional[Dict[str, Any]] = None  # the federated feature scaling (Scaling.to_meta form)
    scaling_round: int = 0  # rounds_done when it was gathered
    norm_bound: Optional[float] = None  # the adaptive bound on change norms for the next round


def save(directory: str, federation: str, spec: ModelSpec, weights: Weights, state: RoundState) -> str:
    """Write a new snapshot and make it current; returns its path. CheckpointError (naming the file) if
    anything cannot be written: nothing current is touched until the new snapshot is complete."""
    for name, t in weights.items():
        if not np.isfinite(t).all():
            raise CheckpointError(f"{directory}: tensor {name!r} of model version {state.model_version} is not "
                                  "finite; not saved")
    name = f"s{state.rounds_done:06d}-v{state.model_version:06d}-{time.time_ns()}"
    tmp = os.path.join(directory, f".new-{os.getpid()}")
    where = tmp
    before = _committed(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp)
        env = Envelope(kind=Kind.MODEL, federation=federation, round=state.rounds_done, sender="checkpoint",
                       model_version=state.model_version, tensors=weights,
                       meta={"model": spec.to_meta(), **({"scaling": state.scaling} if state.scaling else {})})
        where = os.path.join(tmp, MODEL)
        write_atomic(where, encode(env), sync=True)
        if state.optimizer:
            opt = Envelope(kind=Kind.MODEL, federation=federation, round=state.rounds_done, sender="checkpoint",
                           model_version=state.model_version, tensors=state.optimizer)
            where = os.path.join(tmp, OPTIMIZER)
            write_atomic(where, encode(opt), sync=True)
        body = {"federation": federation, "rounds_done": state.rounds_done, "model_version": state.model_version,
                "history": state.history, "dp_events": state.dp_events, "optimizer": bool(state.optimizer),
                "scaling": state.scaling, "scaling_round": state.scaling_round, "norm_bound": state.norm_bound}
        where = os.path.join(tmp, STATE)
        write_atomic(where, json.dumps(body, indent=1, allow_nan=False).encode("utf-8"), sync=True)
        fsync_dir(tmp)
        where = os.path.join(directory, name)
        os.rename(tmp, where)
        fsync_dir(directory)
        where = os.path.join(directory, CURRENT)
        write_atomic(where, name + "\n", sync=True)
        fsync_dir(directory)
    except (OSError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)  # renamed but never named in CURRENT
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointError(f"{where}: cannot write the checkpoint ({reason}); check that {directory} is a "
                              "writable directory with free space") from None
    _prune(directory, {name} | ({before} if before else set()))
    return os.path.join(directory, name)


def lock(directory: str) -> IO[str]:
    """Take the directory for this process until the returned file is closed (or the process dies): a second
    coordinator with the same checkpoint directory (a service and a copy started by hand) would run rounds of
    its own and prune the other's snapshots. CheckpointError naming the holder's pid if it is taken."""
    try:
        os.makedirs(directory, exist_ok=True)
        fh = open(os.path.join(directory, LOCK), "a+", encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"{directory}: cannot use the checkpoint directory ({exc.strerror}); check that it is "
                              "a writable directory") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise CheckpointError(f"{directory}: in use by another coordinator (pid {holder}); stop it first, or give "
                              "this federation's coordinators different checkpoint directories") from None
    try:  # the pid only helps the message above: a full disk must not stop us here
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
    except OSError:
        pass
    return fh


def _committed(directory: str) -> Optional[str]:
    """The name of the snapshot ``CURRENT`` names now, None when there is none (or it cannot be read)."""
    try:
        snapshot = current_snapshot(directory) if os.path.isdir(directory) else None
    except ModelFileError:
        return None
    return os.path.basename(snapshot) if snapshot and snapshot != directory else None


def _prune(directory: str, keep: "set[str]") -> None:
    """Keep the snapshots in ``keep`` (the new current one and the one current before it: both committed)
    and remove every other one, among them a snapshot renamed into place but never named in ``CURRENT`` (a
    full disk or a kill between the two steps), and the leftovers of interrupted saves."""
    for d in os.listdir(directory):
        if d.startswith("s") and d.count("-") == 2 and d not in keep:
            shutil.rmtree(os.path.join(directory, d), ignore_errors=True)
    for d in os.listdir(directory):
        if d.startswith(".new-") and d != f".new-{os.getpid()}":
            shutil.rmtree(os.path.join(directory, d), ignore_errors=True)


def current_dir(directory: str) -> Optional[str]:
    """The directory holding the current snapshot (``fedmq.shared.saved_model.current_snapshot``), with the
    fix for a damaged pointer."""
    try:
        return current_snapshot(directory)
    except ModelFileError as exc:
        raise CheckpointError(f"{exc}; move the checkpoint directory away or run with --fresh") from None


def written_at(directory: str) -> Optional[float]:
    """When the current snapshot was written (its state file's time), None when there is none."""
    try:
        snapshot = current_dir(directory)
        return os.path.getmtime(os.path.join(snapshot, STATE)) if snapshot else None
    except (CheckpointError, OSError):
        return None


def load(directory: str, federation: str, spec: ModelSpec) -> Optional["tuple[Weights, RoundState]"]:
    """The current checkpoint, or None when there is none; CheckpointError (naming the file and the fix)
    when it does not fit this federation or is damaged."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: checkpoint.dir is a file, not a directory; point checkpoint.dir at a "
                              "directory")
    snapshot = current_dir(directory) if os.path.isdir(directory) else None
    if snapshot is None:
        return None
    state_path = os.path.join(snapshot, STATE)
    model_path = os.path.join(snapshot, MODEL)
    where = state_path
    try:
        body = _read_state(state_path)
        where = model_path
        with open(model_path, "rb") as fh:
            env = decode(fh.read())
        where = state_path
        if body.get("federation") != federation or env.federation != federation:
            raise CheckpointError(f"{snapshot}: checkpoint belongs to federation {body.get('federation')!r}, not "
                                  f"{federation!r}; point checkpoint.dir elsewhere or run with --fresh")
        where = model_path
        check_weights(spec, env.tensors)
        if not all(np.isfinite(t).all() for t in env.tensors.values()):
            raise ValueError("the model is not finite")
        if env.model_version != body["model_version"]:
            raise ValueError(f"model version {env.model_version} does not match {state_path}")
        where = state_path
        state = RoundState(body["rounds_done"], body["model_version"], list(body.get("history", [])),
                           _events(body.get("dp_events", []), state_path))
        scaling = Scaling.from_meta(body.get("scaling"), spec.features)  # checked like any other input
        state.scaling = scaling.to_meta() if scaling is not None else None
        state.scaling_round = int(body.get("scaling_round", 0))
        state.norm_bound = _positive(body.get("norm_bound"))
        if body.get("optimizer"):
            where = os.path.join(snapshot, OPTIMIZER)
            state.optimizer = _moments(where, federation, spec, state.model_version)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EnvelopeError) as exc:
        raise CheckpointError(f"{where}: unusable checkpoint ({exc}); move {directory} away or run with "
                              "--fresh") from None
    return {k: v.copy() for k, v in env.tensors.items()}, state


def _read_state(path: str) -> Dict[str, Any]:
    """A snapshot's state.json, its round and model counts and its history checked."""
    with open(path, encoding="utf-8") as fh:
        body = json.load(fh)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    for key in ("rounds_done", "model_version"):
        v = body.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{key} must be a whole number >= 0, not {v!r}")
    if not isinstance(body.get("history", []), list):
        raise ValueError("history must be a list")
    return body


def _positive(value: Any) -> Optional[float]:
    """The checkpointed adaptive norm bound: None (not calibrated yet) or a finite number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"norm_bound must be a finite number > 0, not {value!r}")
    return float(value)


def _events(events: Any, path: str) -> List[List[float]]:
    ok = isinstance(events, list) and all(
        isinstance(e, list) and len(e) == 2 and all(isinstance(x, (int, float)) for x in e)
        and 0 < e[0] <= 1 and e[1] > 0 for e in events)
    if not ok:
        raise CheckpointError(f"{path}: dp_events must be a list of [sampling rate in (0, 1], noise multiplier > 0]")
    return [[float(q), float(z)] for q, z in events]


def _moments(path: str, federation: str, spec: ModelSpec, version: int) -> Weights:
    """The server optimizer's moments of model ``version``: tensors "m/<name>" and "v/<name>"."""
    with open(path, "rb") as fh:
        env = decode(fh.read())
    if env.federation != federation or env.model_version != version:
        raise CheckpointError(f"{path}: optimizer state of model version {env.model_version}, not {version}")
    shapes = expected_shapes(spec)
    for name, t in env.tensors.items():
        moment, _, tensor = name.partition("/")
        if moment not in MOMENTS or tensor not in shapes or tuple(t.shape) != tuple(shapes[tensor]):
            raise CheckpointError(f"{path}: tensor {name!r} is not a moment of this model")
    return {k: np.array(v, np.float64) for k, v in env.tensors.items()}
