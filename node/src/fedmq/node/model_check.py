"""Checks that a .tflite file can be trained on a node: signatures, names, shapes, dtypes, and a train
step on random data that changes the weights and lowers the loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from fedmq.node.trainers.tflite_model import SIGNATURES, TfliteModel


@dataclass
class CheckReport:
    """Each check's outcome, and what was found."""

    results: List[Tuple[bool, str]] = field(default_factory=list)
    weights: Dict[str, Tuple[Tuple[int, ...], str]] = field(default_factory=dict)
    runtime: str = ""

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return bool(self.results) and all(ok for ok, _ in self.results)

    def add(self, ok: bool, text: str) -> bool:
        """Record one check."""
        self.results.append((bool(ok), text))
        return bool(ok)


def _io(model: TfliteModel, name: str) -> Tuple[dict, dict]:
    runner = model.runners[name]
    return runner.get_input_details(), runner.get_output_details()


def check_model(data: bytes, steps: int = 30, seed: int = 0) -> CheckReport:
    """Run every check on the model bytes; never raises for a bad model, reports instead."""
    report = CheckReport()
    try:
        model = TfliteModel(data)
    except (ValueError, RuntimeError) as exc:
        report.add(False, f"loads with the four signatures {', '.join(SIGNATURES)}: {exc}")
        return report
    report.runtime = model.runtime
    report.add(True, f"loads with the four signatures {', '.join(SIGNATURES)} ({model.runtime})")
    train_in, train_out = _io(model, "train")
    infer_in, infer_out = _io(model, "infer")
    get_in, get_out = _io(model, "get_weights")
    set_in, set_out = _io(model, "set_weights")
    if not (report.add(set(train_in) == {"x", "y"} and set(train_out) == {"loss"}, "train(x, y) -> loss")
            & report.add(set(infer_in) == {"x"} and set(infer_out) == {"output"}, "infer(x) -> output")
            & report.add(not get_in and bool(get_out), "get_weights() -> named tensors")
            & report.add(bool(set_out), "set_weights(...) returns an output (a signature without outputs is pruned)")):
        return report
    report.weights = {
        n: (tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name) for n, d in sorted(get_out.items())
    }
    same = {n: (tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name) for n, d in set_in.items()}
    if not report.add(
        same == report.weights, "set_weights takes exactly the tensors get_weights returns (names, shapes, dtypes)"
    ):
        return report
    report.add(all(dt == "float32" for _, dt in report.weights.values()), "every weight is float32")
    x_sig = [int(v) for v in train_in["x"]["shape_signature"]]
    y_sig = [int(v) for v in train_in["y"]["shape_signature"]]
    if not report.add(
        len(x_sig) == 2 and len(y_sig) == 2 and x_sig[0] == -1 and y_sig[0] == -1,
        f"x and y have a dynamic batch dimension (signatures {x_sig} and {y_sig})",
    ):
        return report
    rng = np.random.default_rng(seed)
    features, width = int(x_sig[1]), int(y_sig[1])
    x = rng.normal(size=(16, features)).astype(np.float32)
    y = (
        np.eye(width, dtype=np.float32)[rng.integers(0, width, 16)]
        if width > 1
        else rng.integers(0, 2, (16, 1)).astype(np.float32)
    )
    try:
        w0 = model.get_weights()
        first = model.train_step(x, y)
        for _ in range(steps - 1):
            last = model.train_step(x, y)
        changed = max(float(np.max(np.abs(model.get_weights()[n] - w0[n]))) for n in w0)
        report.add(changed > 0, f"training changes the weights (largest change {changed:.3g})")
        report.add(
            np.isfinite(last) and last < first, f"training lowers the loss ({first:.4f} -> {last:.4f} in {steps} steps)"
        )
        model.set_weights(w0)
        restored = all(np.array_equal(model.get_weights()[n], w0[n]) for n in w0)
        report.add(restored, "set_weights restores get_weights' values exactly")
        # A batch size folded in as a constant gives silently wrong gradients for other sizes:
        # a step on the batch repeated twice must equal a step on the batch once (mean loss).
        model.set_weights(w0)
        model.train_step(x[:5], y[:5])
        once = model.get_weights()
        model.set_weights(w0)
        model.train_step(np.concatenate([x[:5]] * 2), np.concatenate([y[:5]] * 2))
        twice = model.get_weights()
        gap = max(float(np.max(np.abs(once[n] - twice[n]))) for n in once)
        report.add(
            gap < 1e-5, f"the batch size is dynamic, not folded in (same step for a batch and its double: {gap:.2g})"
        )
        out = model.infer(x[:3])
        report.add(out.shape[0] == 3, f"infer works for another batch size (output {out.shape})")
    except (ValueError, RuntimeError) as exc:
        report.add(False, f"running the signatures: {exc}")
    return report
