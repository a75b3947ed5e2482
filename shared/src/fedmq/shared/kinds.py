"""Names of the model kinds (kept free of imports so any module can use them)."""

MODEL_KINDS = ("softmax_regression", "mlp", "sgd_classifier", "sgd_regressor", "mlp_classifier")
CLASSIFIER_KINDS = ("softmax_regression", "mlp", "sgd_classifier", "mlp_classifier")
NEEDS_HIDDEN = ("mlp", "mlp_classifier")
SKLEARN_KINDS = ("sgd_classifier", "sgd_regressor", "mlp_classifier")
