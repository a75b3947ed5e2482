"""Finds a TFLite interpreter: LiteRT (``ai_edge_litert``), then ``tflite_runtime``, then TensorFlow's."""

from __future__ import annotations

import importlib
from typing import Any, Tuple

from fedmq.node.trainers.base import TrainerUnavailable

CANDIDATES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)


def find_interpreter() -> Tuple[Any, str]:
    """The Interpreter class of the first runtime that imports, and that runtime's name."""
    errors = []
    for module, name in CANDIDATES:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return mod.Interpreter, name
    raise TrainerUnavailable("no TFLite runtime is installed (tried " + "; ".join(errors) + "): "
                             "pip install 'fedmq-node[tflite]'")
