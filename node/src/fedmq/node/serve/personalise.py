"""Personalisation: the best model for this home, among the federation's, the federation's fine-tuned on the
gateway's own newest samples, and one trained on those samples alone.

Once the gateway holds ``min_days`` of samples, the newest ``holdout`` share of the recent ones is kept
aside; the global model is fine-tuned on the rest (a few epochs, smaller steps than the federation's), a
local-only model of the same kind is trained on the rest from the start (``local_epochs``, 0: none), and
all three are scored on that share. The one that does best there serves (the federation's on a tie), so a
home whose recent data says nothing new keeps the federation's model, and a home unlike the others is not
served a model worse than its own.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from fedmq.node.serve.config import Personalise
from fedmq.node.trainers import make_trainer
from fedmq.node.trainers.numpy_dense import SUPPORTED as NUMPY_KINDS
from fedmq.shared.datacheck import normalise_labels
from fedmq.shared.messages import TrainParams
from fedmq.shared.models import Weights, evaluate, initial_weights
from fedmq.shared.saved_model import SavedModel
from fedmq.shared.scaling import Scaling, local_stats

MIN_TRAIN = 10  # fewer samples than this (after the holdout) are not fine-tuned on
DEFAULT_LR = 0.01  # the federation's learning rate, until the node has seen a round
LR_SHARE = 0.3  # fine-tuning takes smaller steps than federated training (measured: docs/benchmarks.md)
DAY_S = 86400.0
BLOCKS = 20  # the history's blocks, some of which are held out to choose the model
MARGIN_Z = 2.0  # how many standard errors a candidate must gain on the held-out samples to be served


def score(model: SavedModel, weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (classifiers) or RMSE (regressors) of ``weights`` on raw features ``x``."""
    xs = model.scaling.apply(x) if model.scaling else x
    out = evaluate(model.spec, weights, xs, y if model.spec.is_classifier else np.asarray(y, np.float64))
    return out["accuracy"] if model.spec.is_classifier else float(np.sqrt(out["loss"]))


def better_or_equal(model: SavedModel, mine: float, theirs: float) -> bool:
    """Whether score ``mine`` is at least as good as ``theirs`` (higher accuracy, lower RMSE)."""
    return mine >= theirs if model.spec.is_classifier else mine <= theirs


class LocalCache:
    """The home's own models, kept between global models: they do not depend on the federation's, so one
    made less than ``max_age_s`` ago for the same model kind and settings is used again instead of trained
    anew for every round (on a small gateway that is the costly part)."""

    def __init__(self, max_age_s: float = 3600.0) -> None:
        self.max_age_s = max_age_s
        self.hits = 0
        self._kept: Dict[Tuple[object, ...], Tuple[float, SavedModel]] = {}

    def get(self, key: Tuple[object, ...], make: Callable[[], SavedModel]) -> SavedModel:
        """The model kept under ``key`` if fresh, else ``make()``'s, kept."""
        now = time.monotonic()
        self._kept = {k: v for k, v in self._kept.items() if now - v[0] < self.max_age_s}
        if key in self._kept:
            self.hits += 1
            return self._kept[key][1]
        made = make()
        self._kept[key] = (now, made)
        return made


def personalise(model: SavedModel, x: np.ndarray, y: np.ndarray, p: Personalise, seed: int = 0,
                learning_rate: float = DEFAULT_LR, period_s: float = 0.0,
                local_cache: Optional[LocalCache] = None) -> Tuple[SavedModel, Dict[str, float]]:
    """The model to serve and the scores on the held-out samples: ``global`` and ``personalised``
    (absent when there were too few samples, or less than ``p.min_days`` of them at one per ``period_s``).
    ``x``, ``y``: the node's samples, oldest first; ``learning_rate`` is the federation's (``LR_SHARE`` of it
    is used unless ``p`` sets a rate); ``local_cache`` keeps the local-only models between calls."""
    enough = len(x) * period_s >= p.min_days * DAY_S
    x, y = x[-p.recent_samples:], normalise_labels(model.spec, y[-p.recent_samples:])
    held = held_out(len(x), p.holdout, p.spread)
    if len(x) - held.sum() < MIN_TRAIN or not enough:
        return model, {"global": score(model, model.weights, x, y)} if len(x) else {}
    rate = p.learning_rate or LR_SHARE * learning_rate

    def candidate(name: str, rows: np.ndarray) -> SavedModel:
        if name == "personalised":
            return _trained(model, model.weights, model.scaling, x[rows], y[rows], TrainParams(
                p.epochs, p.batch_size, rate, p.proximal_mu), seed)
        # the home's own model, on its own scaling: what a federated model must not fall below

        def train() -> SavedModel:
            return local_model(model, x[rows], y[rows], TrainParams(p.local_epochs, p.batch_size, learning_rate), seed)

        if local_cache is None:
            return train()
        kept = local_cache.get((repr(model.spec), repr(p), learning_rate, seed, bool(rows.all())), train)
        return replace(model, weights=kept.weights, scaling=kept.scaling)  # the new global model's version

    names = ("personalised", "local") if p.local_epochs else ("personalised",)
    candidates = {"global": model, **{name: candidate(name, ~held) for name in names}}
    scores = {name: score(m, m.weights, x[held], y[held]) for name, m in candidates.items() if _finite(m)}
    losses = {name: sample_losses(m, x[held], y[held]) for name, m in candidates.items() if name in scores}
    best = "global"
    for name in names:  # each must do clearly better than the one before it: the federation's, then the fine-tuned
        if name in losses and clearly_better(losses[name], losses[best]):
            best = name
    scores.update(served=scores[best], choice=_CHOICE[best])
    if best != "global" and p.refit:  # chosen on the held-out samples, then trained as chosen on all of them
        refitted = candidate(best, np.ones(len(x), bool))
        if _finite(refitted):
            return refitted, scores
    return candidates[best], scores


def sample_losses(model: SavedModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample: 1 for a wrong class and 0 for a right one (classifiers), or the squared error."""
    predicted = model.predict(x).values
    if model.spec.is_classifier:
        return np.array([p != t for p, t in zip(predicted, y)], np.float64)
    return (np.asarray(predicted, np.float64) - np.asarray(y, np.float64)) ** 2


def clearly_better(mine: np.ndarray, theirs: np.ndarray) -> bool:
    """Whether per-sample losses ``mine`` are lower than ``theirs`` on the same samples by more than
    ``MARGIN_Z`` standard errors of the mean difference (a paired test): a gain the held-out samples could
    show by chance does not replace a model."""
    d = theirs - mine
    if len(d) < 2:
        return bool(d.sum() > 0)
    return bool(d.mean() > MARGIN_Z * d.std(ddof=1) / np.sqrt(len(d)))


def held_out(n: int, share: float, spread: str) -> np.ndarray:
    """Which of ``n`` samples (oldest first) are held out to choose the model: the newest ``share`` of them,
    or with ``spread`` "blocks" that share of ``BLOCKS`` contiguous blocks, evenly spaced across the whole
    history, so that what runs for hours (an appliance, a week's rhythm) is not left out of the check."""
    mask = np.zeros(n, bool)
    if spread == "newest":
        mask[n - max(1, int(round(n * share))):] = True
        return mask
    edges = np.linspace(0, n, BLOCKS + 1).astype(int)
    held = max(1, int(round(BLOCKS * share)))
    for i in range(held):
        block = int((i + 1) * BLOCKS / held) - 1  # the last block of each stretch: the newest one is held out
        mask[edges[block]:edges[block + 1]] = True
    return mask


def _finite(model: SavedModel) -> bool:
    return all(np.isfinite(t).all() for t in model.weights.values())


_CHOICE = {"global": 0.0, "personalised": 1.0, "local": 2.0}  # the scores map holds numbers only


def local_model(model: SavedModel, x: np.ndarray, y: np.ndarray, params: TrainParams, seed: int) -> SavedModel:
    """A model of ``model``'s kind trained from scratch on raw ``(x, y)`` alone, on their own feature scaling."""
    own = Scaling.from_means(local_stats(x), len(x))
    return _trained(model, initial_weights(model.spec), own, x, y, params, seed)


def _trained(model: SavedModel, start: Weights, scaling: Optional[Scaling], x: np.ndarray, y: np.ndarray,
             params: TrainParams, seed: int) -> SavedModel:
    """``model`` with ``start`` trained on raw ``(x, y)`` under ``scaling`` with ``params``."""
    trainer = make_trainer("numpy" if model.spec.kind in NUMPY_KINDS else "auto", model.spec)
    trainer.set_weights(start)
    trainer.fit(scaling.apply(x) if scaling else x, y, params, np.random.default_rng(seed))
    return replace(model, weights=trainer.get_weights(), scaling=scaling)
