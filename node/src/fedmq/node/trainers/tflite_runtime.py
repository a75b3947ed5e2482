"""Finds a TFLite interpreter: LiteRT (``ai_edge_litert``), then ``tflite_runtime``, then TensorFlow's."""

from __future__ import annotations

import importlib
from typing import Any, Tuple

from fedmq.node.trainers.base import TrainerUnavailable

CANDIDATES = (  # (module, attribute path to the Interpreter class, distribution name)
    ("ai_edge_litert.interpreter", "Interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "Interpreter", "tflite-runtime"),
    ("tensorflow", "lite.Interpreter", "tensorflow"),
)


def find_interpreter() -> Tuple[Any, str]:
    """The Interpreter class of the first runtime that imports, and that runtime's name."""
    errors = []
    for module, attr, name in CANDIDATES:
        try:
            found: Any = importlib.import_module(module)
            for part in attr.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{name}: {exc}")
            continue
        return found, name
    raise TrainerUnavailable("no TFLite runtime is installed (tried " + "; ".join(errors) + "): "
                             "pip install 'fedmq-node[tflite]'")
