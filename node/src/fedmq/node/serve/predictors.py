"""How a served model is run: numpy's forward pass (any kind), or the model's own .tflite file through the
TFLite interpreter's ``infer`` signature (tflite kinds, where the runtime is installed)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from fedmq.node.trainers import TrainerUnavailable
from fedmq.shared.models import head
from fedmq.shared.saved_model import Predictions, SavedModel, predictions

Predictor = Callable[[np.ndarray], Predictions]


def make_predictor(runtime: str, model: SavedModel, tflite_file: Optional[bytes]) -> Predictor:
    """A function from raw features (n, F) to predictions. ``auto`` takes TFLite for a tflite kind whose file
    and runtime are here, numpy otherwise; ``tflite`` raises TrainerUnavailable when it cannot."""
    if runtime == "numpy" or (runtime == "auto" and (model.spec.kind != "tflite" or tflite_file is None)):
        return model.predict
    if model.spec.kind != "tflite" or tflite_file is None:
        raise TrainerUnavailable(f"serve.runtime tflite needs a tflite model and its file, not {model.spec.kind!r}")
    try:
        from fedmq.node.trainers.tflite_model import TfliteModel

        interpreter = TfliteModel(tflite_file)
    except TrainerUnavailable:
        if runtime == "tflite":
            raise
        return model.predict
    interpreter.set_weights(model.weights)
    kind = head(model.spec)

    def predict(x: np.ndarray) -> Predictions:
        out = interpreter.infer(model.scaling.apply(x) if model.scaling else np.asarray(x, np.float32))
        if kind == "linear":
            return Predictions([float(v) for v in out[:, 0]])
        # the file's output is probabilities: back to scores that give the same ones
        p = np.clip(out, 1e-7, 1 - 1e-7)
        scores = np.log(p) if kind == "softmax" else np.log(p / (1 - p))
        return predictions(model.spec, scores)

    return predict
