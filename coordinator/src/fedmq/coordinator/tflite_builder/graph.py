"""A tiny graph builder that serialises to the TFLite flatbuffer schema.

Tensors carry a shape signature where -1 marks the dynamic batch dimension; the static shape stored
next to it uses 1 there, as the TFLite converter does. Ops are executed in the order they are added.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flatbuffers
import numpy as np
from tflite.BuiltinOperator import BuiltinOperator as Op
from tflite.BuiltinOptions import BuiltinOptions
from tflite.TensorType import TensorType

Shape = Tuple[int, ...]


def _schema(name: str) -> Any:
    """A generated schema module (``tflite/__init__`` shadows the module attributes with classes)."""
    return importlib.import_module(f"tflite.{name}")


FBuffer, FModel, FOperator, FOperatorCode, FSignatureDef, FSubGraph, FTensor, FTensorMap = map(
    _schema, ("Buffer", "Model", "Operator", "OperatorCode", "SignatureDef", "SubGraph", "Tensor", "TensorMap"))
_NP_TYPES = {np.dtype(np.float32): TensorType.FLOAT32, np.dtype(np.int32): TensorType.INT32}
# Builtin options each op carries: (options table name, fields). Ops not listed carry none.
OPTIONS: Dict[int, Tuple[str, Dict[str, Any]]] = {
    Op.ADD: ("AddOptions", {}), Op.SUB: ("SubOptions", {}), Op.MUL: ("MulOptions", {}), Op.DIV: ("DivOptions", {}),
    Op.SOFTMAX: ("SoftmaxOptions", {"Beta": 1.0}), Op.LOG_SOFTMAX: ("LogSoftmaxOptions", {}),
    Op.SUM: ("ReducerOptions", {"KeepDims": False}), Op.MEAN: ("ReducerOptions", {"KeepDims": False}),
    Op.STRIDED_SLICE: ("StridedSliceOptions", {}), Op.SHAPE: ("ShapeOptions", {"OutType": TensorType.INT32}),
    Op.CAST: ("CastOptions", {}), Op.GREATER: ("GreaterOptions", {}), Op.EXP: ("ExpOptions", {}),
    Op.NEG: ("NegOptions", {}), Op.ABS: ("AbsOptions", {}), Op.SQUARE: ("SquareOptions", {}),
    Op.READ_VARIABLE: ("ReadVariableOptions", {}), Op.ASSIGN_VARIABLE: ("AssignVariableOptions", {}),
}


@dataclass
class TensorDef:
    """One tensor of a subgraph."""

    name: str
    signature: Shape
    type: int = TensorType.FLOAT32
    data: Optional[bytes] = None


@dataclass
class OpDef:
    """One operator of a subgraph."""

    code: int
    inputs: List[int]
    outputs: List[int]
    options: Optional[Tuple[str, Dict[str, Any]]] = None


@dataclass
class Subgraph:
    """Tensors, ops, inputs and outputs of one subgraph (one signature, or the initializer)."""

    name: str
    tensors: List[TensorDef] = field(default_factory=list)
    ops: List[OpDef] = field(default_factory=list)
    inputs: List[int] = field(default_factory=list)
    outputs: List[int] = field(default_factory=list)

    def tensor(
        self, name: str, signature: Sequence[int], type: int = TensorType.FLOAT32, data: Optional[bytes] = None
    ) -> int:
        """Add a tensor; returns its index."""
        self.tensors.append(TensorDef(f"{name}:{len(self.tensors)}", tuple(signature), type, data))
        return len(self.tensors) - 1

    def const(self, value: Any, dtype: type = np.float32, name: str = "const") -> int:
        """A constant tensor holding ``value``."""
        # np.ascontiguousarray would turn scalars into shape (1,)
        arr: np.ndarray = np.array(value, dtype=dtype, order="C")
        return self.tensor(name, arr.shape, _NP_TYPES[arr.dtype], arr.astype(arr.dtype.newbyteorder("<")).tobytes())

    def input(self, name: str, signature: Sequence[int]) -> int:
        """A float32 input of the subgraph."""
        t = self.tensor(name, signature)
        self.inputs.append(t)
        return t

    def shape(self, t: int) -> Shape:
        """Shape signature of tensor ``t`` (-1 = dynamic batch)."""
        return self.tensors[t].signature

    def op(
        self,
        code: int,
        inputs: Sequence[int],
        out: Optional[Sequence[int]] = None,
        *,
        out_type: int = TensorType.FLOAT32,
        options: Optional[Tuple[str, Dict[str, Any]]] = None,
        name: str = "",
    ) -> int:
        """Append an op with one output of shape ``out`` (or none when ``out`` is None); returns the output."""
        outputs = [] if out is None else [self.tensor(name or f"op{code}", out, out_type)]
        self.ops.append(OpDef(code, list(inputs), outputs, options or OPTIONS.get(code)))
        return outputs[0] if outputs else -1


def broadcast(a: Shape, b: Shape) -> Shape:
    """Numpy broadcasting of two shape signatures (a dynamic dimension wins over 1)."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + a
    b = (1,) * (n - len(b)) + b
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def _options(builder: flatbuffers.Builder, spec: Tuple[str, Dict[str, Any]]) -> Tuple[int, int]:
    name, fields = spec
    mod = _schema(name)
    strings = {k: builder.CreateString(v) for k, v in fields.items() if isinstance(v, str)}
    getattr(mod, f"{name}Start")(builder)
    for k, v in fields.items():
        getattr(mod, f"{name}Add{k}")(builder, strings.get(k, v))
    return getattr(BuiltinOptions, name), getattr(mod, f"{name}End")(builder)


def _int_vector(builder: flatbuffers.Builder, values: Sequence[int]) -> int:
    builder.StartVector(4, len(values), 4)
    for v in reversed(values):
        builder.PrependInt32(int(v))
    return builder.EndVector()


def _offset_vector(builder: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        builder.PrependUOffsetTRelative(o)
    return builder.EndVector()


def _bytes_vector(builder: flatbuffers.Builder, data: bytes) -> int:
    builder.StartVector(1, len(data), 16)  # 16-byte aligned constant data, as the converter writes it
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


@dataclass
class Signature:
    """A named entry point: input and output names mapped to tensors of one subgraph."""

    key: str
    subgraph: int
    inputs: Dict[str, int]
    outputs: Dict[str, int]


def _subgraph(b: Any, g: Subgraph, buffers: List[int], code_index: Dict[int, int]) -> int:
    """One subgraph table: its tensors (``buffers``: the buffer index of each), operators, inputs, outputs."""
    tensor_offsets = []
    for t, buf in zip(g.tensors, buffers):
        name = b.CreateString(t.name)
        shape = _int_vector(b, [1 if d < 0 else d for d in t.signature])
        sig = _int_vector(b, t.signature) if any(d < 0 for d in t.signature) else None
        FTensor.TensorStart(b)
        FTensor.TensorAddShape(b, shape)
        if sig is not None:
            FTensor.TensorAddShapeSignature(b, sig)
        FTensor.TensorAddType(b, t.type)
        FTensor.TensorAddBuffer(b, buf)
        FTensor.TensorAddName(b, name)
        tensor_offsets.append(FTensor.TensorEnd(b))
    op_offsets = []
    for op in g.ops:
        opt = _options(b, op.options) if op.options else None
        ins, outs = _int_vector(b, op.inputs), _int_vector(b, op.outputs)
        FOperator.OperatorStart(b)
        FOperator.OperatorAddOpcodeIndex(b, code_index[op.code])
        FOperator.OperatorAddInputs(b, ins)
        FOperator.OperatorAddOutputs(b, outs)
        if opt is not None:
            FOperator.OperatorAddBuiltinOptionsType(b, opt[0])
            FOperator.OperatorAddBuiltinOptions(b, opt[1])
        op_offsets.append(FOperator.OperatorEnd(b))
    tensors, ops = _offset_vector(b, tensor_offsets), _offset_vector(b, op_offsets)
    ins, outs, name = _int_vector(b, g.inputs), _int_vector(b, g.outputs), b.CreateString(g.name)
    FSubGraph.SubGraphStart(b)
    FSubGraph.SubGraphAddTensors(b, tensors)
    FSubGraph.SubGraphAddInputs(b, ins)
    FSubGraph.SubGraphAddOutputs(b, outs)
    FSubGraph.SubGraphAddOperators(b, ops)
    FSubGraph.SubGraphAddName(b, name)
    return FSubGraph.SubGraphEnd(b)


def _signature(b: Any, s: Signature) -> int:
    """One signature table: its named inputs and outputs and the subgraph it runs."""
    maps = []
    for names in (s.inputs, s.outputs):
        entries = []
        for n, index in names.items():
            ns = b.CreateString(n)
            FTensorMap.TensorMapStart(b)
            FTensorMap.TensorMapAddName(b, ns)
            FTensorMap.TensorMapAddTensorIndex(b, index)
            entries.append(FTensorMap.TensorMapEnd(b))
        maps.append(_offset_vector(b, entries))
    key = b.CreateString(s.key)
    FSignatureDef.SignatureDefStart(b)
    FSignatureDef.SignatureDefAddInputs(b, maps[0])
    FSignatureDef.SignatureDefAddOutputs(b, maps[1])
    FSignatureDef.SignatureDefAddSignatureKey(b, key)
    FSignatureDef.SignatureDefAddSubgraphIndex(b, s.subgraph)
    return FSignatureDef.SignatureDefEnd(b)


def serialise(subgraphs: List[Subgraph], signatures: List[Signature], description: str = "fedmq") -> bytes:
    """The .tflite flatbuffer of these subgraphs and signatures."""
    b = flatbuffers.Builder(1 << 16)
    codes: List[int] = sorted({op.code for g in subgraphs for op in g.ops})
    code_index = {c: i for i, c in enumerate(codes)}
    buffers: List[Optional[bytes]] = [None]  # buffer 0 is the empty sentinel
    tensor_buffers: List[List[int]] = []
    for g in subgraphs:
        idx = []
        for t in g.tensors:
            if t.data is None:
                idx.append(0)
            else:
                buffers.append(t.data)
                idx.append(len(buffers) - 1)
        tensor_buffers.append(idx)
    buffer_offsets = []
    for data in buffers:
        vec = _bytes_vector(b, data) if data else None
        FBuffer.BufferStart(b)
        if vec is not None:
            FBuffer.BufferAddData(b, vec)
        buffer_offsets.append(FBuffer.BufferEnd(b))
    graph_offsets = [_subgraph(b, g, bidx, code_index) for g, bidx in zip(subgraphs, tensor_buffers)]
    code_offsets = []
    for c in codes:
        FOperatorCode.OperatorCodeStart(b)
        FOperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, min(c, Op.PLACEHOLDER_FOR_GREATER_OP_CODES))
        FOperatorCode.OperatorCodeAddBuiltinCode(b, c)
        FOperatorCode.OperatorCodeAddVersion(b, 1)
        code_offsets.append(FOperatorCode.OperatorCodeEnd(b))
    sig_offsets = [_signature(b, s) for s in signatures]
    vecs = [_offset_vector(b, v) for v in (code_offsets, graph_offsets, buffer_offsets, sig_offsets)]
    desc = b.CreateString(description)
    FModel.ModelStart(b)
    FModel.ModelAddVersion(b, 3)
    FModel.ModelAddOperatorCodes(b, vecs[0])
    FModel.ModelAddSubgraphs(b, vecs[1])
    FModel.ModelAddDescription(b, desc)
    FModel.ModelAddBuffers(b, vecs[2])
    FModel.ModelAddSignatureDefs(b, vecs[3])
    b.Finish(FModel.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())
