"""Dense networks (ReLU hidden layers; softmax, logistic or linear head) trained by SGD with optional
momentum and L2, as a .tflite file with four signatures:

* ``train(x, y) -> loss``: one SGD step on a batch; ``y`` is one-hot for softmax, a 0/1 column for
  logistic, the target column for linear. The loss is computed before the step.
* ``infer(x) -> output``: probabilities (softmax / logistic) or the prediction (linear).
* ``get_weights() -> {name: tensor}`` and ``set_weights({name: tensor}) -> status`` (set also resets
  the momentum buffers).
* ``train_prox(x, y, mu, anchor.<name>...) -> loss``: the same step, then FedProx's proximal step
  ``w -= lr * mu * (w_before - anchor)`` on every weight, as the numpy trainer does; the momentum buffers
  carry on (setting the weights from outside between steps would reset them).

Weights live in resource variables shared by the four subgraphs and initialised by a fifth one through
CALL_ONCE. The batch size is dynamic: every batch-dependent shape has -1 in its signature and the
1/B factor is computed from SHAPE(x) at run time, never folded in.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import numpy as np
from tflite.BuiltinOperator import BuiltinOperator as Op
from tflite.TensorType import TensorType

from fedmq.coordinator.tflite_builder.graph import Signature, Subgraph, broadcast, serialise
from fedmq.shared.models import head, layer_sizes
from fedmq.shared.topicmap import ModelSpec

INIT_SUBGRAPH = 5


class _Net:
    """Helpers that add typed ops to one subgraph and track their output shapes."""

    def __init__(self, g: Subgraph) -> None:
        self.g = g

    def binary(self, code: int, a: int, b: int) -> int:
        return self.g.op(code, [a, b], broadcast(self.g.shape(a), self.g.shape(b)))

    def unary(self, code: int, a: int) -> int:
        return self.g.op(code, [a], self.g.shape(a))

    def matmul(self, a: int, b: int, adj_x: bool = False, adj_y: bool = False) -> int:
        sa, sb = self.g.shape(a), self.g.shape(b)
        rows = sa[1] if adj_x else sa[0]
        cols = sb[0] if adj_y else sb[1]
        return self.g.op(Op.BATCH_MATMUL, [a, b], (rows, cols),
                         options=("BatchMatMulOptions", {"AdjX": adj_x, "AdjY": adj_y}))

    def reduce(self, code: int, a: int, axes: List[int]) -> int:
        shape = tuple(d for i, d in enumerate(self.g.shape(a)) if i not in axes)
        return self.g.op(code, [a, self.g.const(axes, np.int32, "axes")], shape)

    def scale(self, a: int, factor: float) -> int:
        return self.binary(Op.MUL, a, self.g.const(factor))

    def batch_size(self, x: int) -> int:
        """B as a float tensor of shape [1], from SHAPE(x) at run time."""
        g = self.g
        shape = g.op(Op.SHAPE, [x], (2,), out_type=TensorType.INT32)
        one = [g.const([v], np.int32, "slice") for v in (0, 1, 1)]
        b = g.op(Op.STRIDED_SLICE, [shape, *one], (1,), out_type=TensorType.INT32)
        return g.op(Op.CAST, [b], (1,))


def _variables(spec: ModelSpec, momentum: float) -> List[Tuple[str, Tuple[int, ...]]]:
    sizes = layer_sizes(spec)
    weights = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        weights += [(f"layers.{i}.weight", (a, b)), (f"layers.{i}.bias", (b,))]
    if momentum:
        weights += [(f"velocity.{n}", s) for n, s in list(weights)]
    return weights


def _handles(g: Subgraph, variables: List[Tuple[str, Tuple[int, ...]]], init: bool = True) -> Dict[str, int]:
    if init:
        g.op(Op.CALL_ONCE, [], None, options=("CallOnceOptions", {"InitSubgraphIndex": INIT_SUBGRAPH}))
    return {n: g.op(Op.VAR_HANDLE, [], (), out_type=TensorType.RESOURCE, name=f"handle.{n}",
                    options=("VarHandleOptions", {"SharedName": n, "Container": ""})) for n, _ in variables}


def _read(g: Subgraph, handles: Dict[str, int], variables: List[Tuple[str, Tuple[int, ...]]]) -> Dict[str, int]:
    return {n: g.op(Op.READ_VARIABLE, [handles[n]], shape, name=n) for n, shape in variables}


def _forward(net: _Net, w: Mapping[str, int], x: int, layers: int) -> List[int]:
    acts = [x]
    for i in range(layers):
        z = net.binary(Op.ADD, net.matmul(acts[-1], w[f"layers.{i}.weight"]), w[f"layers.{i}.bias"])
        acts.append(net.unary(Op.RELU, z) if i < layers - 1 else z)
    return acts


def _loss_and_delta(net: _Net, kind: str, z: int, y: int, batch: int) -> Tuple[int, int]:
    """Mean loss over the batch and dL/dz (already divided by B)."""
    if kind == "softmax":
        per = net.reduce(Op.SUM, net.binary(Op.MUL, y, net.unary(Op.LOG_SOFTMAX, z)), [1])
        loss = net.unary(Op.NEG, net.reduce(Op.MEAN, per, [0]))
        diff = net.binary(Op.SUB, net.unary(Op.SOFTMAX, z), y)
    elif kind == "logistic":
        # stable binary cross-entropy: relu(z) - y*z + log(1 + exp(-|z|))
        soft = net.unary(Op.LOG, net.binary(Op.ADD, net.unary(Op.EXP, net.unary(Op.NEG, net.unary(Op.ABS, z))),
                                              net.g.const(1.0)))
        per = net.binary(Op.ADD, net.binary(Op.SUB, net.unary(Op.RELU, z), net.binary(Op.MUL, y, z)), soft)
        loss = net.reduce(Op.MEAN, net.reduce(Op.SUM, per, [1]), [0])
        diff = net.binary(Op.SUB, net.unary(Op.LOGISTIC, z), y)
    else:
        err = net.binary(Op.SUB, z, y)
        loss = net.reduce(Op.MEAN, net.reduce(Op.SUM, net.unary(Op.SQUARE, err), [1]), [0])
        diff = net.scale(err, 2.0)
    return loss, net.binary(Op.DIV, diff, batch)


def _output(net: _Net, kind: str, z: int) -> int:
    return net.unary(Op.SOFTMAX, z) if kind == "softmax" else net.unary(Op.LOGISTIC, z) if kind == "logistic" else z


def _train(spec: ModelSpec, variables, lr: float, momentum: float, l2: float,
           prox: bool = False) -> Tuple[Subgraph, Signature]:
    g = Subgraph("train_prox" if prox else "train")
    net = _Net(g)
    sizes = layer_sizes(spec)
    n_layers = len(sizes) - 1
    handles = _handles(g, variables)
    w = _read(g, handles, variables)
    x = g.input("x", (-1, sizes[0]))
    y = g.input("y", (-1, sizes[-1]))
    inputs = {"x": x, "y": y}
    if prox:
        inputs["mu"] = g.input("mu", (1,))
        inputs.update({f"anchor.{n}": g.input(f"anchor.{n}", shape) for n, shape in variables
                       if n.startswith("layers.")})
    batch = net.batch_size(x)
    acts = _forward(net, w, x, n_layers)
    loss, delta = _loss_and_delta(net, head(spec), acts[-1], y, batch)
    if l2:
        for i in range(n_layers):
            sq = net.reduce(Op.SUM, net.reduce(Op.SUM, net.unary(Op.SQUARE, w[f"layers.{i}.weight"]), [1]), [0])
            loss = net.binary(Op.ADD, loss, net.scale(sq, 0.5 * l2))
    new: Dict[str, int] = {}
    zero = g.const(0.0)
    for i in range(n_layers - 1, -1, -1):
        wn, bn = f"layers.{i}.weight", f"layers.{i}.bias"
        grads = {wn: net.matmul(acts[i], delta, adj_x=True), bn: net.reduce(Op.SUM, delta, [0])}
        if l2:
            grads[wn] = net.binary(Op.ADD, grads[wn], net.scale(w[wn], l2))
        if i > 0:
            mask = g.op(Op.CAST, [g.op(Op.GREATER, [acts[i], zero], g.shape(acts[i]), out_type=TensorType.BOOL)],
                        g.shape(acts[i]))
            delta = net.binary(Op.MUL, net.matmul(delta, w[wn], adj_y=True), mask)
        for name, grad in grads.items():
            step = grad
            if momentum:
                step = net.binary(Op.ADD, net.scale(w[f"velocity.{name}"], momentum), grad)
                new[f"velocity.{name}"] = step
            new[name] = net.binary(Op.SUB, w[name], net.scale(step, lr))
            if prox:  # FedProx: the gradient of mu/2 |w - anchor|^2 at the pre-step weights, outside the momentum
                pull = net.binary(Op.MUL, net.scale(net.binary(Op.SUB, w[name], inputs[f"anchor.{name}"]), lr),
                                  inputs["mu"])
                new[name] = net.binary(Op.SUB, new[name], pull)
    for name, value in new.items():  # every read above happens before any of these writes
        g.op(Op.ASSIGN_VARIABLE, [handles[name], value], None)
    g.outputs = [loss]
    return g, Signature("train_prox" if prox else "train", 4 if prox else 0, inputs, {"loss": loss})


def _infer(spec: ModelSpec, variables) -> Tuple[Subgraph, Signature]:
    g = Subgraph("infer")
    net = _Net(g)
    sizes = layer_sizes(spec)
    w = _read(g, _handles(g, variables), variables)
    x = g.input("x", (-1, sizes[0]))
    out = _output(net, head(spec), _forward(net, w, x, len(sizes) - 1)[-1])
    g.outputs = [out]
    return g, Signature("infer", 1, {"x": x}, {"output": out})


def _get(variables, weights) -> Tuple[Subgraph, Signature]:
    g = Subgraph("get_weights")
    w = _read(g, _handles(g, variables), [v for v in variables if v[0] in weights])
    g.outputs = list(w.values())
    return g, Signature("get_weights", 2, {}, w)


def _set(variables, weights) -> Tuple[Subgraph, Signature]:
    g = Subgraph("set_weights")
    handles = _handles(g, variables)
    inputs = {n: g.input(n, shape) for n, shape in variables if n in weights}
    for n, shape in variables:
        value = inputs[n] if n in inputs else g.const(np.zeros(shape), name=f"zeros.{n}")
        g.op(Op.ASSIGN_VARIABLE, [handles[n], value], None)
    status = g.op(Op.ADD, [g.const([0.0]), g.const([1.0])], (1,), name="status")  # never an output-less signature
    g.outputs = [status]
    return g, Signature("set_weights", 3, inputs, {"status": status})


def _init(variables, initial: Mapping[str, np.ndarray]) -> Subgraph:
    g = Subgraph("init")
    handles = _handles(g, variables, init=False)
    for n, shape in variables:
        value = initial.get(n, np.zeros(shape, np.float32))
        g.op(Op.ASSIGN_VARIABLE, [handles[n], g.const(value, name=f"init.{n}")], None)
    return g


def build_dense_model(spec: ModelSpec, initial: Mapping[str, np.ndarray], learning_rate: float) -> bytes:
    """A training-capable .tflite for a ``tflite`` model spec, starting from ``initial`` weights.

    ``spec.options``: ``momentum`` (default 0) and ``l2`` (default 0); the head comes from ``output``.
    """
    momentum = float(spec.options.get("momentum", 0.0))
    l2 = float(spec.options.get("l2", 0.0))
    variables = _variables(spec, momentum)
    weights = set(initial)
    graphs = [_train(spec, variables, learning_rate, momentum, l2), _infer(spec, variables),
              _get(variables, weights), _set(variables, weights),
              _train(spec, variables, learning_rate, momentum, l2, prox=True)]
    subgraphs = [g for g, _ in graphs] + [_init(variables, initial)]
    return serialise(subgraphs, [s for _, s in graphs])
