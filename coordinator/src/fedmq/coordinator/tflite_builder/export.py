"""The ``tflite`` format of ``fedmq model export`` (entry point ``fedmq.model_exporters``): the global model
as a .tflite file with the same signatures the nodes train (``infer`` predicts), its weights built in."""

from __future__ import annotations

from fedmq.coordinator.tflite_builder.dense import build_dense_model
from fedmq.shared.saved_model import SavedModel

EXPORT_LEARNING_RATE = 0.01  # the rate of the file's own train signature (for fine-tuning it further)


def to_tflite(model: SavedModel) -> bytes:
    """A .tflite of ``model`` (a ``tflite`` kind: ``fedmq.shared.saved_model.as_tflite_kind``)."""
    return build_dense_model(model.spec, model.weights, EXPORT_LEARNING_RATE)
