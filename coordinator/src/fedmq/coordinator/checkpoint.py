"""Checkpoints: the global model (a protocol v1 envelope file) and the round state (JSON), each
written to a temporary file, fsynced and atomically renamed, after every applied round."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fedmq.shared.envelope import Envelope, EnvelopeError, Kind, decode, encode
from fedmq.shared.models import Weights, check_weights
from fedmq.shared.topicmap import ModelSpec
from fedmq.shared.files import write_atomic

STATE = "state.json"
MODEL = "model.fmq"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


@dataclass
class RoundState:
    """Where the federation stands: rounds applied, model version, and the history of round summaries."""

    rounds_done: int = 0
    model_version: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)


def save(directory: str, federation: str, spec: ModelSpec, weights: Weights, state: RoundState) -> None:
    """Write the model, then the state that points at it."""
    os.makedirs(directory, exist_ok=True)
    env = Envelope(kind=Kind.MODEL, federation=federation, round=state.rounds_done, sender="checkpoint",
                   model_version=state.model_version, tensors=weights, meta={"model": spec.to_meta()})
    write_atomic(os.path.join(directory, MODEL), encode(env), sync=True)
    body = {"federation": federation, "rounds_done": state.rounds_done, "model_version": state.model_version,
            "history": state.history}
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
        state = RoundState(int(body["rounds_done"]), int(body["model_version"]), list(body.get("history", [])))
    except (OSError, ValueError, KeyError, EnvelopeError) as exc:
        raise CheckpointError(f"{directory}: unusable checkpoint ({exc}); move it away or run with --fresh") from None
    return {k: v.copy() for k, v in env.tensors.items()}, state
