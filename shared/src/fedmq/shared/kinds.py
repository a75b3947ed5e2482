"""Model kinds and what each needs (kept free of imports so any module can use them)."""

MODEL_KINDS = ("softmax_regression", "mlp", "sgd_classifier", "sgd_regressor", "mlp_classifier", "tflite")
CLASSIFIER_KINDS = ("softmax_regression", "mlp", "sgd_classifier", "mlp_classifier")
NEEDS_HIDDEN = ("mlp", "mlp_classifier")
SKLEARN_KINDS = ("sgd_classifier", "sgd_regressor", "mlp_classifier")
# Kinds whose weights are ``layers.<i>.weight`` / ``layers.<i>.bias`` (hidden layers optional for tflite).
LAYERED_KINDS = ("mlp", "mlp_classifier", "tflite")
HEADS = ("softmax", "logistic", "linear")


def spec_problem(kind: str, classes: list, hidden: list, options: dict) -> str:
    """Why classes / hidden layers / options do not fit ``kind`` (empty when they do)."""
    if kind == "tflite":
        out = options.get("output", "softmax")
        if out not in HEADS:
            return f"options.output must be one of {', '.join(HEADS)}, not {out!r}"
        want = {"softmax": "at least 2", "logistic": "exactly 2", "linear": "no"}[out]
        if (
            (out == "softmax" and len(classes) < 2)
            or (out == "logistic" and len(classes) != 2)
            or (out == "linear" and classes)
        ):
            return f"a tflite model with a {out} output needs {want} classes"
        for key, low, high in (("momentum", 0.0, 0.999), ("l2", 0.0, 1.0)):
            v = options.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                return f"options.{key} must be a number in [{low}, {high}]"
        return ""
    if (kind in CLASSIFIER_KINDS) != (len(classes) >= 2):
        return f"a {kind} needs at least two classes" if kind in CLASSIFIER_KINDS else f"a {kind} has no classes"
    if (kind in NEEDS_HIDDEN) != bool(hidden):
        return f"a {kind} needs hidden layer sizes" if kind in NEEDS_HIDDEN else f"a {kind} has no hidden layers"
    return ""
