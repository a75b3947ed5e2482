"""Checkpoints: the global model (with its feature scaling) and the server optimizer's moments (protocol
v1 envelope files) and the round state (JSON: rounds, history, the privacy accountant's events, the
scaling), each written to a temporary file,
fsynced and atomically renamed, after every applied round."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from fedmq.shared.envelope import Envelope, EnvelopeError, Kind, decode, encode
from fedmq.shared.files import write_atomic
from fedmq.shared.models import Weights, check_weights, expected_shapes
from fedmq.shared.scaling import Scaling
from fedmq.shared.topicmap import ModelSpec

STATE = "state.json"
MODEL = "model.fmq"
OPTIMIZER = "optimizer.fmq"
MOMENTS = ("m", "v")  # the server optimizer's tensors are named "<moment>/<model tensor>"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


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


def save(directory: str, federation: str, spec: ModelSpec, weights: Weights, state: RoundState) -> None:
    """Write the model, then the state that points at it."""
    os.makedirs(directory, exist_ok=True)
    env = Envelope(kind=Kind.MODEL, federation=federation, round=state.rounds_done, sender="checkpoint",
                   model_version=state.model_version, tensors=weights,
                   meta={"model": spec.to_meta(), **({"scaling": state.scaling} if state.scaling else {})})
    write_atomic(os.path.join(directory, MODEL), encode(env), sync=True)
    if state.optimizer:
        opt = Envelope(kind=Kind.MODEL, federation=federation, round=state.rounds_done, sender="checkpoint",
                       model_version=state.model_version, tensors=state.optimizer)
        write_atomic(os.path.join(directory, OPTIMIZER), encode(opt), sync=True)
    body = {"federation": federation, "rounds_done": state.rounds_done, "model_version": state.model_version,
            "history": state.history, "dp_events": state.dp_events, "optimizer": bool(state.optimizer),
            "scaling": state.scaling, "scaling_round": state.scaling_round}
    write_atomic(os.path.join(directory, STATE), json.dumps(body, indent=1, allow_nan=False).encode("utf-8"), sync=True)


def load(directory: str, federation: str, spec: ModelSpec) -> Optional["tuple[Weights, RoundState]"]:
    """The last checkpoint, or None when there is none; CheckpointError when it does not fit this federation."""
    state_path = os.path.join(directory, STATE)
    model_path = os.path.join(directory, MODEL)
    if not os.path.exists(state_path):
        return None
    try:
        with open(state_path, encoding="utf-8") as fh:
            body = json.load(fh)
        with open(model_path, "rb") as fh:
            env = decode(fh.read())
        if body.get("federation") != federation or env.federation != federation:
            raise CheckpointError(f"{directory}: checkpoint belongs to federation {body.get('federation')!r}")
        check_weights(spec, env.tensors)
        if env.model_version != body["model_version"]:
            raise CheckpointError(f"{model_path}: model version {env.model_version} does not match {state_path}")
        state = RoundState(int(body["rounds_done"]), int(body["model_version"]), list(body.get("history", [])),
                           _events(body.get("dp_events", []), state_path))
        scaling = Scaling.from_meta(body.get("scaling"), spec.features)  # checked like any other input
        state.scaling = scaling.to_meta() if scaling is not None else None
        state.scaling_round = int(body.get("scaling_round", 0))
        if body.get("optimizer"):
            state.optimizer = _moments(os.path.join(directory, OPTIMIZER), federation, spec, state.model_version)
    except (OSError, ValueError, KeyError, TypeError, EnvelopeError) as exc:
        raise CheckpointError(f"{directory}: unusable checkpoint ({exc}); move it away or run with --fresh") from None
    return {k: v.copy() for k, v in env.tensors.items()}, state


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
