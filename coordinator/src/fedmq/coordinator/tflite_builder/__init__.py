"""Writes training-capable .tflite files without TensorFlow: the flatbuffer is assembled with the
``flatbuffers`` package and the TFLite schema's generated builders (the ``tflite`` package), and the
backward pass is written by hand in builtin ops only (no Flex ops)."""

from fedmq.coordinator.tflite_builder.dense import build_dense_model

__all__ = ["build_dense_model"]
