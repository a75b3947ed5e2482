"""The .tflite files fedmq writes without TensorFlow train exactly like the numpy reference."""

import itertools

import numpy as np
import pytest

from fedmq.coordinator.tflite_builder import build_dense_model
from fedmq.node.trainers.numpy_dense import NumpyDenseTrainer
from fedmq.node.trainers.tflite_model import TfliteModel
from fedmq.shared.models import initial_weights, targets
from fedmq.shared.topicmap import ModelSpec

HEADS = {"softmax": (0, 1, 2, 3), "logistic": ("no", "yes"), "linear": ()}
ARCHS = [(), (7,), (6, 5)]
OPTIMISERS = [{}, {"momentum": 0.9}, {"l2": 0.01}, {"momentum": 0.5, "l2": 0.05}]


def spec_for(head, hidden, opts):
    return ModelSpec("tflite", 9, HEADS[head], hidden=hidden, seed=3, options={"output": head, **opts})


def data(spec, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, spec.features)).astype(np.float32)
    y = rng.choice(spec.classes, n) if spec.classes else rng.normal(size=n)
    return x, targets(spec, np.asarray(y))


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.mark.parametrize("head,hidden,opts", list(itertools.product(HEADS, ARCHS, OPTIMISERS)))
def test_k_steps_match_numpy_sgd(head, hidden, opts):
    spec = spec_for(head, hidden, opts)
    w0 = initial_weights(spec)
    if not hidden:  # zeros would hide transposition mistakes
        w0 = {k: np.random.default_rng(1).normal(size=v.shape).astype(np.float32) * 0.3 for k, v in w0.items()}
    model = TfliteModel(build_dense_model(spec, w0, learning_rate=0.05))
    for batch in (1, 7, 32):
        model.set_weights(w0)
        ref = NumpyDenseTrainer(spec)
        ref.set_weights(w0)
        for k in range(5):
            x, t = data(spec, batch, seed=100 * batch + k)
            got_loss = model.train_step(x, t)
            want_loss = ref.step(x, t, 0.05)
            assert got_loss == pytest.approx(want_loss, rel=1e-4, abs=1e-5)
        got, want = model.get_weights(), ref.get_weights()
        assert set(got) == set(want)
        for name in want:
            assert rel(got[name], want[name]) < 1e-5, (name, batch, rel(got[name], want[name]))


def test_weights_by_name_and_infer():
    spec = spec_for("softmax", (4,), {})
    w0 = initial_weights(spec)
    model = TfliteModel(build_dense_model(spec, w0, 0.1))
    np.testing.assert_array_equal(model.get_weights()["layers.1.bias"], w0["layers.1.bias"])
    moved = {k: v + 1 for k, v in w0.items()}
    model.set_weights(moved)
    for k, v in model.get_weights().items():
        np.testing.assert_allclose(v, moved[k])
    x, _ = data(spec, 5, 0)
    probs = model.infer(x)
    assert probs.shape == (5, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)


def test_file_is_small_and_has_no_flex_ops():
    data_ = build_dense_model(spec_for("softmax", (32,), {}), initial_weights(spec_for("softmax", (32,), {})), 0.1)
    assert data_[4:8] == b"TFL3"
    assert b"Flex" not in data_
    assert len(data_) < 64 * 1024


@pytest.mark.parametrize("opts", [{}, {"momentum": 0.9}])
def test_fedprox_pulls_numpy_and_tflite_training_towards_the_start_alike(opts):
    """Also with momentum: the proximal step runs inside the file (train_prox), so the optimiser's momentum
    carries on between steps as in the numpy trainer (setting weights from outside would reset it)."""
    from fedmq.node.trainers.tflite_model import TfliteTrainer
    from fedmq.shared.messages import TrainParams

    spec = spec_for("softmax", (7,), opts)
    w0 = initial_weights(spec)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, spec.features)).astype(np.float32)
    y = rng.choice(spec.classes, 64)
    moved = {}
    for mu in (0.0, 0.1, 5.0):
        params = TrainParams(3, 8, 0.1, proximal_mu=mu)
        out = []
        for trainer in (NumpyDenseTrainer(spec), TfliteTrainer(spec, build_dense_model(spec, w0, 0.1))):
            trainer.set_weights(w0)
            trainer.fit(x, y, params, np.random.default_rng(0))
            out.append(trainer.get_weights())
        for k in w0:  # both trainers run the same proximal SGD
            np.testing.assert_allclose(out[1][k], out[0][k], rtol=0, atol=1e-4)
        moved[mu] = np.sqrt(sum(np.sum((out[0][k] - w0[k]) ** 2) for k in w0))
    assert moved[5.0] < 0.7 * moved[0.0], moved  # the proximal term keeps the weights near the start
