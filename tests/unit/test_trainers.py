"""Trainers: numpy gradients are right, scikit-learn weights go in and out by name, training learns."""

import numpy as np
import pytest

from fedhelp import blobs
from fedmq.node.trainers import make_trainer
from fedmq.node.trainers.numpy_dense import sgd_step
from fedmq.shared.messages import TrainParams
from fedmq.shared.models import evaluate, expected_shapes, initial_weights, to_layers
from fedmq.shared.topicmap import ModelSpec

SPECS = {
    "softmax_regression": ModelSpec("softmax_regression", 8, (0, 1, 2)),
    "mlp": ModelSpec("mlp", 8, (0, 1, 2), hidden=(5,)),
    "sgd_classifier": ModelSpec("sgd_classifier", 8, (0, 1, 2)),
    "mlp_classifier": ModelSpec("mlp_classifier", 8, (0, 1, 2), hidden=(5,)),
}


def test_numpy_mlp_gradient_matches_finite_differences():
    spec = SPECS["mlp"]
    x, y = blobs(7, seed=1)
    onehot = np.eye(3)[y]

    def loss(layers):
        from fedmq.shared.models import forward, softmax

        p = softmax(forward(layers, x.astype(np.float64))[-1])
        return -np.mean(np.sum(onehot * np.log(p), axis=1))

    base = [(w.copy(), b.copy()) for w, b in to_layers(spec, initial_weights(spec))]
    lr = 1e-3
    stepped = [(w.copy(), b.copy()) for w, b in base]
    sgd_step(stepped, x.astype(np.float64), onehot, lr)
    analytic = (base[0][0] - stepped[0][0]) / lr
    eps = 1e-6
    for i, j in [(0, 0), (3, 2), (7, 4)]:
        plus = [(w.copy(), b.copy()) for w, b in base]
        plus[0][0][i, j] += eps
        minus = [(w.copy(), b.copy()) for w, b in base]
        minus[0][0][i, j] -= eps
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        assert analytic[i, j] == pytest.approx(numeric, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("kind", list(SPECS))
def test_every_trainer_learns_and_keeps_the_layout(kind):
    spec = SPECS[kind]
    trainer = make_trainer("auto", spec)
    x, y = blobs(300, seed=2)
    trainer.set_weights(initial_weights(spec))
    before = evaluate(spec, trainer.get_weights(), x, y)
    trainer.fit(x, y, TrainParams(5, 16, 0.05), np.random.default_rng(0))
    w = trainer.get_weights()
    assert {k: v.shape for k, v in w.items()} == expected_shapes(spec)
    after = evaluate(spec, w, x, y)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.9


def test_sklearn_trainer_starts_from_the_global_weights():
    spec = SPECS["sgd_classifier"]
    trainer = make_trainer("sklearn", spec)
    x, y = blobs(100, seed=3)
    good = make_trainer("numpy", ModelSpec("softmax_regression", 8, (0, 1, 2)))
    good.fit(x, y, TrainParams(5, 16, 0.1), np.random.default_rng(0))
    trainer.set_weights(good.get_weights())
    trainer.fit(x, y, TrainParams(1, 16, 1e-9), np.random.default_rng(0))  # a negligible step
    for k, v in good.get_weights().items():
        np.testing.assert_allclose(trainer.get_weights()[k], v, atol=1e-4)


def test_labels_outside_the_topic_map_are_refused():
    trainer = make_trainer("numpy", SPECS["softmax_regression"])
    x, _ = blobs(10, seed=4)
    with pytest.raises(ValueError, match="not one of the model's classes"):
        trainer.fit(x, np.full(10, 7), TrainParams(1, 4, 0.1), np.random.default_rng(0))


def test_sgd_regressor_learns_a_linear_target():
    spec = ModelSpec("sgd_regressor", 4)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.7
    trainer = make_trainer("auto", spec)
    trainer.fit(x, y, TrainParams(5, 16, 0.01), np.random.default_rng(0))
    w = trainer.get_weights()
    assert w["coef"].shape == (4,) and w["intercept"].shape == (1,)
    assert evaluate(spec, w, x, y)["r2"] > 0.99
