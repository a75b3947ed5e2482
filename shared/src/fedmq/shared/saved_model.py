"""A trained model as one self-contained object: its spec, weights, feature scaling and feature names, and
the federation, version and round it came from. It is read from a coordinator's checkpoint, a node's saved
copy of the global model (both protocol v1 envelope files) or an export (.npz), and it predicts.

The .npz export holds one array per weight (by its layout name, see ``fedmq.shared.models``),
``scaling.mean`` and ``scaling.scale`` when the federation scales its features, and ``meta``: a JSON
string with the kind, head, classes, features, feature names, federation, version and round. It needs
nothing but numpy to use (docs/serving.md shows the ten lines).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fedmq.shared import __version__
from fedmq.shared.envelope import Envelope, EnvelopeError, Kind, decode, encode
from fedmq.shared.files import write_atomic
from fedmq.shared.models import (
    Weights,
    check_weights,
    class_probabilities,
    from_layers,
    head,
    raw_scores,
    spec_from_meta,
    to_layers,
)
from fedmq.shared.scaling import Scaling
from fedmq.shared.topicmap.model import ModelSpec

CURRENT = "CURRENT"  # a checkpoint directory's pointer to its current snapshot
STATE = "state.json"
MODEL = "model.fmq"
EXPORT_FORMAT = "fedmq-model/1"


class ModelFileError(ValueError):
    """A model file that cannot be read; the message names the file and says what to do."""


@dataclass(frozen=True)
class Predictions:
    """Per sample: the predicted class label or value; for classifiers the class probabilities (in the
    order of ``classes``) and the confidence (the predicted class's probability)."""

    values: List[Any]
    probabilities: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None


@dataclass(frozen=True)
class SavedModel:
    """A global model with everything needed to use it away from the federation."""

    spec: ModelSpec
    weights: Weights
    scaling: Optional[Scaling]
    federation: str
    model_version: int
    round: int = 0
    feature_names: Tuple[str, ...] = ()
    saved_at: float = field(default_factory=time.time)  # Unix time this copy was made (a node: when it arrived)
    file_sha256: str = ""  # a tflite kind's model file (the .tflite the nodes train), by its SHA-256

    def predict(self, x: np.ndarray) -> Predictions:
        """Predictions for raw (unscaled) features ``x`` of shape (n, features)."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.features:
            raise ValueError(f"expected {self.spec.features} features per sample, got shape {x.shape}")
        scores = raw_scores(self.spec, self.weights, self.scaling.apply(x) if self.scaling else x)
        return predictions(self.spec, scores)

    def meta(self) -> Dict[str, Any]:
        """The JSON description that travels with the weights."""
        return {"format": EXPORT_FORMAT, "model": self.spec.to_meta(), "head": head(self.spec),
                "federation": self.federation, "model_version": self.model_version, "round": self.round,
                "feature_names": list(self.feature_names), "saved_at": self.saved_at, "fedmq": __version__,
                **({"file_sha256": self.file_sha256} if self.file_sha256 else {}),
                **({"scaling": self.scaling.to_meta()} if self.scaling else {})}

    def to_bytes(self) -> bytes:
        """As a protocol v1 model envelope (the format of checkpoints and of a node's saved copy)."""
        env = Envelope(kind=Kind.MODEL, federation=self.federation, round=self.round, sender="saved",
                       model_version=self.model_version, tensors=dict(self.weights), meta=self.meta())
        return encode(env)

    def save(self, path: str) -> None:
        """Write to ``path`` atomically and durably: after a power cut the file is this model or the last."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_atomic(path, self.to_bytes(), mode=0o600, sync=True)

    def export_npz(self, path: str) -> None:
        """Write the self-contained .npz export (plain arrays and a JSON string: no pickles)."""
        arrays: Dict[str, Any] = {name: np.asarray(t, np.float32) for name, t in self.weights.items()}
        if self.scaling is not None:
            arrays["scaling.mean"] = np.asarray(self.scaling.mean, np.float64)
            arrays["scaling.scale"] = np.asarray(self.scaling.scale, np.float64)
        arrays["meta"] = np.asarray(json.dumps(self.meta()))
        tmp = f"{path}.tmp.{os.getpid()}.npz"
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def as_tflite_kind(model: SavedModel) -> SavedModel:
    """The same network as a ``tflite`` kind (``layers.<i>`` layout, the same head), as a .tflite holds it."""
    if model.spec.kind == "tflite":
        return model
    spec = replace(model.spec, kind="tflite", options={"output": head(model.spec)})
    return replace(model, spec=spec, weights=from_layers(spec, to_layers(model.spec, model.weights)))


def predictions(spec: ModelSpec, scores: np.ndarray) -> Predictions:
    """Raw output scores -> class labels with probabilities and confidence, or regression values."""
    if not spec.is_classifier:
        return Predictions([float(v) for v in scores[:, 0]])
    probs = class_probabilities(scores)
    best = probs.argmax(axis=1)
    return Predictions([spec.classes[i] for i in best], probs, probs[np.arange(len(best)), best])


def from_envelope(env: Envelope, *, saved_at: Optional[float] = None, feature_names: Tuple[str, ...] = ()
                  ) -> SavedModel:
    """The model an (already verified) model envelope carries; ValueError if its description is malformed."""
    if env.kind != Kind.MODEL:
        raise ValueError("not a model envelope")
    spec = spec_from_meta(env.meta.get("model"))
    weights = {k: np.asarray(v, np.float32) for k, v in env.tensors.items()}
    check_weights(spec, weights)
    names = env.meta.get("feature_names", list(feature_names))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or len(names) not in (0, spec.features):
        raise ValueError(f"feature_names must be a list of {spec.features} strings")
    stamp = env.meta.get("saved_at", time.time()) if saved_at is None else saved_at
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool) or not np.isfinite(stamp):
        raise ValueError("saved_at must be a Unix time")
    file = env.meta.get("file")  # a received model announces its file; a saved copy names it
    sha = env.meta.get("file_sha256", file.get("sha256", "") if isinstance(file, dict) else "")
    if not isinstance(sha, str) or (sha and not re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError("file_sha256 must be a SHA-256 in hex")
    return SavedModel(
        spec,
        weights,
        Scaling.from_meta(env.meta.get("scaling"), spec.features),
        env.federation,
        env.model_version,
        env.round,
        tuple(names),
        float(stamp),
        sha,
    )


def current_snapshot(directory: str) -> Optional[str]:
    """The directory holding a checkpoint's current snapshot: named by CURRENT, or ``directory`` itself for a
    checkpoint written before snapshots (files directly inside it); None when there is none. ModelFileError
    when CURRENT cannot be read or names no snapshot."""
    pointer = os.path.join(directory, CURRENT)
    if os.path.exists(pointer):
        try:
            with open(pointer, encoding="utf-8") as fh:
                name = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{pointer}: cannot read ({exc})") from None
        if not name or "/" in name or name.startswith(".") or not os.path.isdir(os.path.join(directory, name)):
            raise ModelFileError(f"{pointer}: names no snapshot in {directory} ({name!r})")
        return os.path.join(directory, name)
    if os.path.exists(os.path.join(directory, STATE)):
        return directory
    return None


def read_model(path: str) -> SavedModel:
    """A model from a checkpoint directory, an envelope file (``model.fmq``, a node's ``global-model-<node id>.fmq``)
    or an .npz export; ModelFileError naming the file otherwise."""
    if os.path.isdir(path):
        snapshot = current_snapshot(path)
        if snapshot is None:
            raise ModelFileError(
                f"{path}: no checkpoint in this directory (no {CURRENT} and no {STATE}); name a "
                "checkpoint directory, a .fmq model file or an .npz export"
            )
        path = os.path.join(snapshot, MODEL)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ModelFileError(f"{path}: {exc.strerror}") from None
    try:
        if data[:6] == b"\x93NUMPY" or data[:2] == b"PK":
            return _from_npz(path)
        return from_envelope(decode(data))
    except (EnvelopeError, ValueError, KeyError) as exc:
        raise ModelFileError(
            f"{path}: not a fedmq model ({exc}); name a checkpoint directory, a .fmq model file or an .npz export"
        ) from None


def _from_npz(path: str) -> SavedModel:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"meta.format is not {EXPORT_FORMAT!r}")
        tensors = {k: z[k] for k in z.files if k != "meta" and not k.startswith("scaling.")}
    env = Envelope(
        kind=Kind.MODEL,
        federation=str(meta.get("federation", "")),
        round=int(meta.get("round", 0)),
        sender="export",
        model_version=int(meta.get("model_version", 0)),
        tensors=tensors,
        meta=meta,
    )
    return from_envelope(env)
