#!/usr/bin/env python3
"""Turn your own TensorFlow model into a training-capable .tflite file that fedmq nodes can train.

OPTIONAL: this script needs TensorFlow (pip install tensorflow-cpu); no fedmq distribution depends on it,
and nodes never need it. fedmq builds dense models itself without TensorFlow (model kind ``tflite``);
use this script for architectures of your own.

Your module file defines a class (default name ``Model``) derived from ``tf.Module`` with:

* ``features`` and ``outputs``: the widths of x and y;
* plain ``tf.Variable`` attributes (no Keras layers: in a tf.Module they convert without their
  initialisers);
* ``weights()``: a dict from stable names to those variables (fedmq moves weights by name);
* ``forward(x)``: the model's output;
* ``train_step(x, y)``: one optimisation step with HAND-WRITTEN gradients (``GradientTape`` gradients
  need Flex ops that no node runtime can run), updating variables with ``assign_sub``, returning the
  mean loss over the batch (divide by ``tf.shape(x)[0]``, never by a constant batch size).

The script wraps them into the four signatures fedmq expects (``train``, ``infer``, ``get_weights``,
``set_weights``), each with a dynamic batch dimension and at least one output (a signature without
outputs is pruned by the converter), converts with builtin ops only and resource variables, and runs
``fedmq model check`` on the result when fedmq-node is installed.

    python deploy/tools/tf_module_to_tflite.py deploy/tools/example_tf_module.py --out my.tflite
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile


def load_module_class(path: str, name: str):  # type: ignore[no-untyped-def]
    """Import ``name`` from the Python file at ``path``."""
    spec = importlib.util.spec_from_file_location("user_tf_module", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot import")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, name):
        raise SystemExit(f"{path}: no class {name!r}")
    return getattr(mod, name)


def wrap(model):  # type: ignore[no-untyped-def]
    """A tf.Module exposing the four fedmq signatures around the user's model."""
    import tensorflow as tf

    for sub in model.submodules:
        if isinstance(sub, tf.keras.layers.Layer):
            raise SystemExit(f"{type(sub).__name__} is a Keras layer: use plain tf.Variable attributes instead")
    weights = model.weights()
    if not weights or not all(isinstance(v, tf.Variable) for v in weights.values()):
        raise SystemExit("weights() must return a non-empty dict of tf.Variable")
    x_spec = tf.TensorSpec([None, model.features], tf.float32, name="x")
    y_spec = tf.TensorSpec([None, model.outputs], tf.float32, name="y")

    class Wrapped(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=[x_spec, y_spec])
        def train(self, x, y):  # type: ignore[no-untyped-def]
            return {"loss": self.model.train_step(x, y)}

        @tf.function(input_signature=[x_spec])
        def infer(self, x):  # type: ignore[no-untyped-def]
            return {"output": self.model.forward(x)}

        @tf.function(input_signature=[])
        def get_weights(self):  # type: ignore[no-untyped-def]
            return {name: v.read_value() for name, v in weights.items()}

        @tf.function(input_signature=[tf.TensorSpec(v.shape, v.dtype, name=n) for n, v in weights.items()])
        def set_weights(self, *values):  # type: ignore[no-untyped-def]
            for v, value in zip(weights.values(), values):
                v.assign(value)
            # an output that depends on every assignment, so nothing is pruned
            return {"status": tf.add_n([tf.reduce_sum(v.read_value()) * 0.0 for v in weights.values()]) + 1.0}

    return Wrapped()


def convert(module) -> bytes:  # type: ignore[no-untyped-def]
    """SavedModel with four signatures -> .tflite with builtin ops and resource variables."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        sigs = {
            "train": module.train.get_concrete_function(),
            "infer": module.infer.get_concrete_function(),
            "get_weights": module.get_weights.get_concrete_function(),
            "set_weights": module.set_weights.get_concrete_function(),
        }
        tf.saved_model.save(module, tmp, signatures=sigs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex: fail loudly instead
        converter.experimental_enable_resource_variables = True
        return converter.convert()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module_file", help="Python file defining your tf.Module")
    ap.add_argument("--class-name", default="Model", help="class to instantiate (default Model)")
    ap.add_argument("--out", required=True, help="where to write the .tflite file")
    args = ap.parse_args()
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        print("this optional script needs TensorFlow: pip install tensorflow-cpu", file=sys.stderr)
        return 2
    data = convert(wrap(load_module_class(args.module_file, args.class_name)()))
    with open(args.out, "wb") as fh:
        fh.write(data)
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes)")
    try:
        from fedmq.node.model_check import check_model
    except ImportError:
        print("fedmq-node is not installed here; run 'fedmq model check' on the file yourself")
        return 0
    report = check_model(data)
    for ok, text in report.results:
        print(f"  [{'ok' if ok else 'FAIL'}] {text}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
