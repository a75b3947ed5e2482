"""Checkpoints: what a restarted coordinator reads back, and the clear refusal of files that do not fit."""

import json
import os
import pathlib

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


def state_file(tmp_path):
    return pathlib.Path(checkpoint.current_dir(str(tmp_path))) / checkpoint.STATE


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
    path = state_file(tmp_path)
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
    st.optimizer = {f"{m}/{k}": np.full(v.shape, 0.5) for m in ("m", "v") for k, v in weights.items()}
    checkpoint.save(str(tmp_path), "f", SPEC, weights, st)
    old_optimizer = (state_file(tmp_path).parent / checkpoint.OPTIMIZER).read_bytes()
    st.optimizer, st.model_version = {}, 3  # a newer model, with version 2's optimizer file put beside it
    checkpoint.save(str(tmp_path), "f", SPEC, weights, st)
    (state_file(tmp_path).parent / checkpoint.OPTIMIZER).write_bytes(old_optimizer)
    body = json.loads(state_file(tmp_path).read_text())
    body["optimizer"] = True
    state_file(tmp_path).write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="optimizer state of model version 2, not 3"):
        checkpoint.load(str(tmp_path), "f", SPEC)


def test_a_save_interrupted_at_any_step_leaves_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """The process dies (here: an exception) after each file operation of a save in turn: the checkpoint
    that loads is always the last complete one, never a mix."""
    weights, st = saved(tmp_path)
    calls = {"n": 0}
    real_replace, real_rename = os.replace, os.rename

    class Died(Exception):
        pass

    def dying(real, limit):
        def op(*a, **k):
            calls["n"] += 1
            if calls["n"] > limit:
                raise Died()
            return real(*a, **k)
        return op

    newer = RoundState(rounds_done=3, model_version=3, history=st.history + [{"round": 3}], optimizer=st.optimizer)
    for limit in range(6):
        calls["n"] = 0
        monkeypatch.setattr(os, "replace", dying(real_replace, limit))
        monkeypatch.setattr(os, "rename", dying(real_rename, limit))
        try:
            checkpoint.save(str(tmp_path), "f", SPEC, {k: v + 1 for k, v in weights.items()}, newer)
            completed = True
        except Died:
            completed = False
        monkeypatch.setattr(os, "replace", real_replace)
        monkeypatch.setattr(os, "rename", real_rename)
        got_weights, got = checkpoint.load(str(tmp_path), "f", SPEC)
        expected = 3 if completed else 2
        assert got.rounds_done == got.model_version == expected
        np.testing.assert_array_equal(got_weights["coef"], weights["coef"] + (1 if completed else 0))
        if completed:
            break
        saved(tmp_path)  # back to the round-2 checkpoint for the next try
    assert completed


@pytest.mark.parametrize("body", ["null", "[]", '{"federation": "f", "rounds_done": -1, "model_version": 2}',
                                  '{"federation": "f", "rounds_done": "2", "model_version": 2}', "{not json"])
def test_a_corrupted_state_file_is_refused_by_name(tmp_path, body):
    saved(tmp_path)
    state_file(tmp_path).write_text(body)
    with pytest.raises(CheckpointError, match="state.json: unusable checkpoint"):
        checkpoint.load(str(tmp_path), "f", SPEC)


def test_unwritable_or_wrong_checkpoint_directories_are_named(tmp_path):
    weights = initial_weights(SPEC)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(CheckpointError, match="afile"):
        checkpoint.save(str(afile), "f", SPEC, weights, RoundState(1, 1))
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        checkpoint.load(str(afile), "f", SPEC)
    with pytest.raises(CheckpointError, match="not finite"):
        checkpoint.save(str(tmp_path / "c"), "f", SPEC, {k: v + np.inf for k, v in weights.items()}, RoundState(1, 1))
    assert not (tmp_path / "c").exists() or not os.listdir(tmp_path / "c")


def test_old_single_directory_checkpoints_still_load(tmp_path):
    from fedmq.shared.envelope import Envelope, Kind, encode

    weights = initial_weights(SPEC)
    env = Envelope(kind=Kind.MODEL, federation="f", round=2, sender="checkpoint", model_version=2, tensors=weights)
    (tmp_path / checkpoint.MODEL).write_bytes(encode(env))
    (tmp_path / checkpoint.STATE).write_text(json.dumps({"federation": "f", "rounds_done": 2, "model_version": 2}))
    assert checkpoint.load(str(tmp_path), "f", SPEC)[1].rounds_done == 2


def test_a_checkpoint_directory_has_one_coordinator_at_a_time(tmp_path):
    d = str(tmp_path / "ck")
    held = checkpoint.lock(d)
    with pytest.raises(CheckpointError, match=rf"in use by another coordinator \(pid {os.getpid()}\)"):
        checkpoint.lock(d)
    held.close()  # (a dead process releases it the same way)
    checkpoint.lock(d).close()
    for _ in range(3):  # the lock file is not a snapshot: saving and pruning leave it alone
        saved(tmp_path / "ck")
    assert os.path.exists(os.path.join(d, checkpoint.LOCK)) and checkpoint.load(d, "f", SPEC) is not None
