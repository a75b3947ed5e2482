"""``fedmq model export`` and ``fedmq model predict``: the federation's model as a file of its own, used
away from fedmq.

Sources: a coordinator's checkpoint directory, a ``.fmq`` model file (a node keeps the latest global model in
``<cache_dir>/global-model-<node id>.fmq``), or, with ``--from-broker NODE.yaml``, the retained global model on the
broker that node configuration names (its signature verified with the node's keys). Formats: ``npz``
(weights, scaling and a JSON description; numpy only) and ``tflite`` for ``tflite`` kinds and the other
layered kinds, through an exporter another distribution provides (the coordinator's, entry-point group
``fedmq.model_exporters``), with the description beside it in ``FILE.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import replace
from typing import Callable, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from fedmq.shared.plugins import plugins
from fedmq.shared.saved_model import ModelFileError, Predictions, SavedModel, as_tflite_kind, from_envelope, read_model

EXPORTERS = "fedmq.model_exporters"
FETCH_WAIT_S = 15.0  # for the broker to accept the connection
RETAINED_WAIT_S = 5.0  # then for the retained model (the broker sends it on subscribing)


def exporters() -> List[str]:
    """Formats this installation can export: npz always, and those other distributions add."""
    return ["npz", *sorted(ep.name for ep in plugins(EXPORTERS))]


def _exporter(fmt: str) -> Callable[[SavedModel], bytes]:
    for ep in plugins(EXPORTERS):
        if ep.name == fmt:
            try:
                return ep.load()
            except ImportError as exc:
                raise ModelFileError(f"the {fmt} exporter cannot load ({exc}): pip install "
                                     f"'fedmq-coordinator[{fmt}]'") from None
    raise ModelFileError(f"no exporter for format {fmt!r} is installed here (formats: {', '.join(exporters())}); "
                         "the tflite exporter comes with the coordinator: pip install 'fedmq-coordinator[tflite]'")


def fetch_from_broker(config: str, wait_s: float = FETCH_WAIT_S) -> SavedModel:
    """The retained global model on the broker a node configuration names, verified as the node verifies it."""
    from fedmq.node.config import load_node_config
    from fedmq.node.global_model import as_saved, open_model
    from fedmq.shared import codecs
    from fedmq.shared.identities import COORDINATOR
    from fedmq.shared.mqtt import MqttLink
    from fedmq.shared.signing import Auth
    from fedmq.shared.topics import Topics

    cfg = load_node_config(config)
    auth = Auth(cfg.node_id, cfg.security.signing_key, cfg.security.keys) if (
        cfg.security.signing_key and cfg.security.keys) else None
    topic = Topics(cfg.federation, cfg.broker.topic_prefix).model()
    link = MqttLink(f"fedmq-export-{cfg.node_id}-{os.getpid()}", cfg.broker, persistent=False,
                    max_packet_bytes=cfg.max_message_bytes)
    link.subscribe(topic)
    if not link.start(wait_s=wait_s):
        link.stop()
        raise ModelFileError(f"{config}: cannot reach the broker {cfg.broker.host}:{cfg.broker.port}")
    try:
        msg = link.get(timeout=RETAINED_WAIT_S)
    finally:
        link.stop()
    if msg is None:
        raise ModelFileError(f"{config}: no retained global model on {topic} within {RETAINED_WAIT_S:g} s (has the "
                             "federation run a round?)")
    try:
        env, _, tensors = open_model(msg.payload, cfg.federation, cfg.max_message_bytes, auth, (COORDINATOR,))
        return as_saved(env, codecs.to_dense(tensors))
    except ValueError as exc:
        raise ModelFileError(f"{topic}: refused: {exc}") from None


def export(model: SavedModel, out: str, fmt: str) -> List[str]:
    """Write ``model`` to ``out`` in ``fmt``; the files written."""
    if fmt == "npz":
        model.export_npz(out)
        return [out]
    if fmt == "tflite":
        model = as_tflite_kind(model)
    data = _exporter(fmt)(model)
    with open(out, "wb") as fh:
        fh.write(data)
    with open(out + ".json", "w", encoding="utf-8") as fh:
        json.dump(model.meta(), fh, indent=1)
    return [out, out + ".json"]


def load_for_predict(path: str) -> Tuple[SavedModel, Callable[[np.ndarray], Predictions]]:
    """A model file for ``predict``: an .npz export, a .fmq file, a checkpoint, or a .tflite export (with its
    .json description beside it, run through the TFLite interpreter)."""
    if not path.endswith(".tflite"):
        model = read_model(path)
        return model, model.predict
    from fedmq.node.serve.predictors import make_predictor

    try:
        with open(path + ".json", encoding="utf-8") as fh:
            meta = json.load(fh)
        with open(path, "rb") as fh:
            data = fh.read()
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: needs its description {path}.json beside it ({exc})") from None
    from fedmq.node.trainers import TrainerUnavailable
    from fedmq.shared.envelope import Envelope, Kind

    try:
        from fedmq.node.trainers.tflite_model import TfliteModel

        weights = TfliteModel(data).get_weights()
    except TrainerUnavailable as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    env = Envelope(kind=Kind.MODEL, federation=str(meta.get("federation", "")), round=int(meta.get("round", 0)),
                   sender="export", model_version=int(meta.get("model_version", 0)), tensors=weights, meta=meta)
    model = from_envelope(env)
    return model, make_predictor("tflite", model, data)


def read_csv(path: str, model: SavedModel, label_column: str) -> Tuple[np.ndarray, Optional[List[str]]]:
    """Features (by the model's feature names when it has them and the header holds them all, else every
    column but the label, in order) and the label column if there is one."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    if not rows:
        raise ModelFileError(f"{path}: empty; expected a header row and one row per sample")
    header, body = rows[0], [r for r in rows[1:] if r]
    names = list(model.feature_names)
    if names and all(n in header for n in names):
        cols = [header.index(n) for n in names]
    else:
        cols = [i for i, h in enumerate(header) if h != label_column]
    if len(cols) != model.spec.features:
        raise ModelFileError(f"{path}: {len(cols)} feature columns, the model takes {model.spec.features}"
                             + (f" ({', '.join(names)})" if names else ""))
    try:
        x = np.array([[float(r[i]) for i in cols] for r in body], np.float32).reshape(len(body), len(cols))
    except (ValueError, IndexError) as exc:
        raise ModelFileError(f"{path}: a row is not {len(cols)} numbers ({exc})") from None
    labels = [r[header.index(label_column)] for r in body] if label_column in header else None
    return x, labels


def write_predictions(out: TextIO, model: SavedModel, pred: Predictions) -> None:
    """CSV: the prediction, and for classifiers the confidence and each class's probability."""
    w = csv.writer(out)
    classes: Sequence = model.spec.classes if pred.probabilities is not None else ()
    w.writerow(["prediction", *(["confidence"] if classes else []), *(f"p_{c}" for c in classes)])
    for i, value in enumerate(pred.values):
        extra = [] if pred.probabilities is None or pred.confidence is None else [
            f"{pred.confidence[i]:.6f}", *(f"{p:.6f}" for p in pred.probabilities[i])]
        w.writerow([value, *extra])


def score_labels(model: SavedModel, pred: Predictions, labels: List[str]) -> str:
    """Accuracy or RMSE of the predictions against a label column."""
    if model.spec.is_classifier:
        hits = sum(str(p) == _label(t) for p, t in zip(pred.values, labels))
        return f"accuracy {hits / max(len(labels), 1):.4f} on {len(labels)} samples"
    err = np.asarray(pred.values, np.float64) - np.asarray([float(t) for t in labels])
    return f"rmse {float(np.sqrt(np.mean(err ** 2))):.4f} on {len(labels)} samples"


def _label(text: str) -> str:
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if f.is_integer() else text


def run_export(args: argparse.Namespace) -> int:
    """``fedmq model export``."""
    try:
        if args.format != "npz":
            _exporter(args.format)  # a format this installation cannot write is said before any work
        model = fetch_from_broker(args.from_broker) if args.from_broker else read_model(args.source)
        if args.feature_names:
            names = tuple(n.strip() for n in args.feature_names.split(","))
            if len(names) != model.spec.features:
                raise ModelFileError(f"--feature-names: {len(names)} names, the model takes {model.spec.features}")
            model = replace(model, feature_names=names)
        written = export(model, args.output, args.format)
    except ModelFileError as exc:
        print(f"fedmq model export: {exc}", file=sys.stderr)
        return 2
    print(f"model {model.model_version} of federation {model.federation} ({model.spec.kind}, {model.spec.features} "
          f"features{', scaled' if model.scaling else ''}) written to {', '.join(written)}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """``fedmq model predict``."""
    try:
        model, predict = load_for_predict(args.model)
        x, labels = read_csv(args.data, model, args.label_column)
        pred = predict(x)
    except (ModelFileError, ValueError) as exc:
        print(f"fedmq model predict: {exc}", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as fh:
            write_predictions(fh, model, pred)
    else:
        write_predictions(sys.stdout, model, pred)
    if labels is not None:
        print(f"fedmq model predict: {score_labels(model, pred, labels)}", file=sys.stderr)
    return 0
