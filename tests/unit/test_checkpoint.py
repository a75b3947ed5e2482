"""Checkpoints: what a restarted coordinator reads back, and the clear refusal of files that do not fit."""

import json

import numpy as np
import pytest

from fedmq.coordinator import checkpoint
from fedmq.coordinator.checkpoint import CheckpointError, RoundState
from fedmq.shared.models import initial_weights
from fedmq.shared.topicmap import ModelSpec

SPEC = ModelSpec(kind="softmax_regression", features=4, classes=[0, 1, 2])


def saved(tmp_path, **state):
    weights = initial_weights(SPEC)
    moments = {f"{m}/{k}": np.full(v.shape, 0.5) for m in ("m", "v") for k, v in weights.items()}
    st = RoundState(rounds_done=2, model_version=2, history=[{"round": 1}, {"round": 2}],
                    dp_events=[[0.1, 1.2], [1.0, 1.2]], optimizer=moments, **state)
    checkpoint.save(str(tmp_path), "f", SPEC, weights, st)
    return weights, st


def test_model_state_moments_and_privacy_events_come_back(tmp_path):
    weights, st = saved(tmp_path)
    got_weights, got = checkpoint.load(str(tmp_path), "f", SPEC)
    assert (got.rounds_done, got.model_version, got.history, got.dp_events) == (2, 2, st.history, st.dp_events)
    assert set(got.optimizer) == set(st.optimizer)
    for k in weights:
        np.testing.assert_array_equal(got_weights[k], weights[k])
        np.testing.assert_array_equal(got.optimizer[f"v/{k}"], 0.5)


@pytest.mark.parametrize("events", [[[0.0, 1.0]], [[0.5]], "all", [[0.5, -1.0]], [["x", 1.0]]])
def test_bad_privacy_events_are_refused_by_file(tmp_path, events):
    saved(tmp_path)
    path = tmp_path / checkpoint.STATE
    body = json.loads(path.read_text())
    body["dp_events"] = events
    path.write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="state.json: dp_events"):
        checkpoint.load(str(tmp_path), "f", SPEC)


def test_optimizer_state_of_another_model_or_version_is_refused(tmp_path):
    weights, st = saved(tmp_path)
    st.optimizer = {"m/other": np.zeros(3)}
    checkpoint.save(str(tmp_path), "f", SPEC, weights, st)
    with pytest.raises(CheckpointError, match="optimizer.fmq: tensor 'm/other' is not a moment"):
        checkpoint.load(str(tmp_path), "f", SPEC)
    st.optimizer, st.model_version = {}, 3  # a newer model, but the optimizer file is still version 2's
    checkpoint.save(str(tmp_path), "f", SPEC, weights, st)
    body = json.loads((tmp_path / checkpoint.STATE).read_text())
    body["optimizer"] = True
    (tmp_path / checkpoint.STATE).write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="optimizer state of model version 2, not 3"):
        checkpoint.load(str(tmp_path), "f", SPEC)
