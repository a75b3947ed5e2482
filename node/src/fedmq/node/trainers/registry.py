"""Trainers by name: the entry points of ``fedmq.trainers`` (the built-in ones are declared by fedmq-node, a
trainer of your own by its distribution: docs/extending.md). ``auto`` picks by the model's kind."""

from __future__ import annotations

from typing import List, Optional, Type

from fedmq.node.trainers.base import Trainer, TrainerUnavailable
from fedmq.shared.kinds import SKLEARN_KINDS
from fedmq.shared.plugins import plugins
from fedmq.shared.topicmap import ModelSpec

GROUP = "fedmq.trainers"


def trainer_names() -> List[str]:
    """Every installed trainer's name, and ``auto``."""
    return ["auto", *sorted({ep.name for ep in plugins(GROUP)})]


def auto_trainer(spec: ModelSpec) -> str:
    """What ``auto`` means for a model kind: scikit-learn for its kinds, TFLite for ``tflite``, else numpy."""
    return "sklearn" if spec.kind in SKLEARN_KINDS else "tflite" if spec.kind == "tflite" else "numpy"


def trainer_class(name: str) -> Type[Trainer]:
    """The trainer class called ``name``; TrainerUnavailable when it is unknown or cannot be imported here
    (a missing optional dependency: the message says what to install)."""
    eps = [ep for ep in plugins(GROUP) if ep.name == name]
    if not eps:
        raise TrainerUnavailable(f"unknown trainer {name!r} (installed: {', '.join(trainer_names())})")
    ep = eps[0]
    try:
        cls = ep.load()
    except ImportError as exc:
        dist = ep.dist.name if ep.dist is not None else "the distribution that provides it"
        extra = f"[{','.join(ep.extras)}]" if ep.extras else ""
        raise TrainerUnavailable(f"trainer {name!r} cannot run here ({exc}): pip install '{dist}{extra}'") from None
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise TrainerUnavailable(f"the entry point of trainer {name!r} ({ep.value}) is not a Trainer")
    return cls


def make_trainer(backend: str, spec: ModelSpec, model_file: Optional[bytes] = None) -> Trainer:
    """The trainer ``backend`` (or ``auto``) for ``spec``; ``model_file`` is the model's .tflite if it has one."""
    return trainer_class(auto_trainer(spec) if backend == "auto" else backend).create(spec, model_file)
