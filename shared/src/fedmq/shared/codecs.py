"""Update and model codecs: how tensors are compressed on the wire (docs/protocol.md, section 4.4).

* ``raw``: the tensors as they are (float32 from nodes, float64 sums in partial aggregates).
* ``float16``: every tensor as IEEE half precision, same names and shapes.
* ``int8``: every tensor ``T`` as ``T`` (int8, same shape) plus ``T@scale`` (float32, one scale per
  ``block`` values in C order; ``block`` 0 means one scale for the tensor): ``value = q * scale``.
* ``topk``: the largest-magnitude ``fraction`` of all the model's entries. Indices count through the
  concatenation of every tensor flattened in C order, in the order of the model's tensors (as the global
  model envelope lists them); every other entry is zero. Indices go as ``@idx`` (int32, strictly
  increasing; ``index: int32``), as ``@gap`` (uint8 gaps, index = running sum - 1; a gap over 255 is
  bridged by filler entries of value zero; ``index: gap8``) or Elias–Fano coded as ``@hi`` and ``@lo``
  (uint8 bit streams, about 2 + log2(1 / fraction) bits an index; ``index: ef``, the default, see
  ``bitpack``). Values go as ``@val``: float32 (``values: float32``), int8 (``values: int8``) or 4-bit
  codes two to a byte (``values: int4``, the default), the last two with one float32 ``@val@scale``.

With ``delta`` the tensors are the difference to the global model of the envelope's ``model_version``.
Error feedback (``topk`` and ``int8``) keeps on the node what compression dropped and adds it to the
next update, so nothing is lost, only delayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from fedmq.shared import bitpack

CODECS = ("raw", "float16", "int8", "topk")
TOPK_INDEX = ("gap8", "int32", "ef")
TOPK_VALUES = ("int8", "float32", "int4")
LEVELS = {"int8": 127, "int4": bitpack.INT4_MAX}  # largest code of the scaled value encodings
GAP_MAX = 255
MAX_BLOCK = 1 << 20


class CodecError(ValueError):
    """Tensors that do not follow the codec their envelope names."""


@dataclass(frozen=True)
class Codec:
    """A codec and its parameters, as the topic map's ``compression`` section sets them."""

    name: str = "raw"
    delta: bool = False
    block: int = 0
    fraction: float = 0.01
    error_feedback: bool = False
    index: str = "ef"
    values: str = "int4"

    def params(self) -> Dict[str, Any]:
        """The envelope header's ``codec_params`` for this codec."""
        out: Dict[str, Any] = {"delta": self.delta}
        if self.name == "int8":
            out["block"] = self.block
        elif self.name == "topk":
            out.update(index=self.index, values=self.values)
        return out

    def to_meta(self) -> Dict[str, Any]:
        """JSON form carried to nodes in the model envelope's ``meta.update_codec``."""
        return {"name": self.name, "delta": self.delta, "block": self.block, "fraction": self.fraction,
                "error_feedback": self.error_feedback, "index": self.index, "values": self.values}

    @classmethod
    def from_meta(cls, meta: Any) -> "Codec":
        """Rebuild and check a codec from ``meta.update_codec`` (untrusted input)."""
        if not isinstance(meta, dict):
            raise CodecError("update_codec must be an object")
        name, delta, ef = meta.get("name"), meta.get("delta", False), meta.get("error_feedback", False)
        block, fraction = meta.get("block", 0), meta.get("fraction", 0.01)
        index, values = meta.get("index", "int32"), meta.get("values", "float32")  # 1.1 coordinators name neither
        if name not in CODECS:
            raise CodecError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
        if index not in TOPK_INDEX or values not in TOPK_VALUES:
            raise CodecError(f"index must be one of {TOPK_INDEX} and values one of {TOPK_VALUES}")
        if not isinstance(delta, bool) or not isinstance(ef, bool):
            raise CodecError("delta and error_feedback must be true or false")
        if not isinstance(block, int) or isinstance(block, bool) or not 0 <= block <= MAX_BLOCK:
            raise CodecError(f"block must be an integer in [0, {MAX_BLOCK}]")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise CodecError("fraction must be a number in (0, 1]")
        codec = cls(name=name, delta=delta, block=block, fraction=float(fraction), error_feedback=ef, index=index,
                    values=values)
        problem = codec.problem()
        if problem:
            raise CodecError(problem)
        return codec

    def problem(self) -> str:
        """Why this combination makes no sense (empty when it does)."""
        if self.name == "topk" and not self.delta:
            return "topk keeps a few entries of a change: it needs delta: true"
        if self.error_feedback and not self.delta:
            return "error feedback accumulates what compression dropped from a change: it needs delta: true"
        return ""


@dataclass
class Sparse:
    """A decoded top-k tensor: flat indices and values of a tensor of ``shape`` that is zero elsewhere."""

    idx: np.ndarray
    val: np.ndarray
    shape: Tuple[int, ...]

    def dense(self) -> np.ndarray:
        """The full tensor (float64)."""
        out = np.zeros(math.prod(self.shape), np.float64)
        out[self.idx] = self.val
        return out.reshape(self.shape)


Decoded = Union[np.ndarray, Sparse]


def _block_scales(flat: np.ndarray, block: int, levels: int = 127) -> np.ndarray:
    """float32 scales (max abs / ``levels``) of every ``block`` values, or one for all when ``block`` is 0."""
    size = flat.size
    if not block or block >= size:  # one scale: no padding, no copies
        return np.array([np.abs(flat).max(initial=0.0) / levels], np.float32)
    nblocks = math.ceil(size / block)
    padded = np.zeros(nblocks * block, np.float64)
    padded[:size] = np.abs(flat)
    return (padded.reshape(nblocks, block).max(axis=1) / levels).astype(np.float32)


def _expand_scales(scale: np.ndarray, block: int, size: int) -> Union[float, np.ndarray]:
    """The scale of every value: a scalar when one scale covers the tensor."""
    if scale.size == 1:
        return float(scale[0])
    return np.repeat(scale.astype(np.float64), block)[:size]


def _quantise(flat: np.ndarray, full: Union[float, np.ndarray], levels: int = 127) -> np.ndarray:
    """int8 codes in [-levels, levels] of ``flat`` (float64) for the scale(s) ``full``; 0 where a scale is 0."""
    if isinstance(full, float):
        q = flat * (1.0 / full) if full > 0 else np.zeros_like(flat)
    else:
        q = np.divide(flat, full, out=np.zeros_like(flat), where=full > 0)
    return np.clip(np.rint(q, out=q), -levels, levels, out=q).astype(np.int8)


def compress(codec: Codec, tensors: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """(wire tensors, what the receiver will reconstruct) for float tensors under ``codec``."""
    if codec.name == "topk":
        return _topk(codec, tensors)
    wire: Dict[str, np.ndarray] = {}
    seen: Dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        t = np.asarray(t)
        if codec.name == "raw":
            wire[name] = seen[name] = t.astype(np.float32, copy=False)
        elif codec.name == "float16":
            wire[name] = t.astype(np.float16)
            seen[name] = wire[name].astype(np.float64)
        else:  # int8
            flat = t.reshape(-1).astype(np.float64, copy=False)
            scale = _block_scales(flat, codec.block)
            full = _expand_scales(scale, codec.block, flat.size)
            q = _quantise(flat, full)
            wire[name], wire[name + "@scale"] = q.reshape(t.shape), scale
            seen[name] = (q * full).reshape(t.shape)
    return wire, seen


def _topk(codec: Codec, tensors: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    flat = np.concatenate([np.asarray(t, np.float64).reshape(-1) for t in tensors.values()])
    k = min(flat.size, max(1, math.ceil(codec.fraction * flat.size)))
    idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:])
    wire: Dict[str, np.ndarray] = {}
    if codec.index == "gap8":
        idx, wire["@gap"] = _with_fillers(idx)
    elif codec.index == "ef":
        wire["@hi"], wire["@lo"] = bitpack.ef_encode(idx, flat.size)
    else:
        wire["@idx"] = idx.astype(np.int32)
    val = flat[idx]
    if codec.values in LEVELS:
        levels = LEVELS[codec.values]
        scale = _block_scales(val, 0, levels)
        q = _quantise(val, float(scale[0]), levels)
        wire["@val"], wire["@val@scale"] = (q if codec.values == "int8" else bitpack.int4_pack(q)), scale
        val = q * np.float64(scale[0])
    else:
        wire["@val"] = val.astype(np.float32)
        val = wire["@val"]
    kept = np.zeros_like(flat)
    kept[idx] = val
    seen, offset = {}, 0
    for name, t in tensors.items():
        size = int(np.size(t))
        seen[name] = kept[offset:offset + size].reshape(np.shape(t))
        offset += size
    return wire, seen


def _with_fillers(idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted indices -> (indices with filler entries wherever a gap exceeds 255, their uint8 gaps)."""
    gaps = np.diff(idx, prepend=-1)
    if gaps.size and gaps.max() > GAP_MAX:
        fill = (gaps - 1) // GAP_MAX  # fillers of gap 255 before each entry; its own gap is then in [1, 255]
        out = np.full(gaps.size + int(fill.sum()), GAP_MAX, np.int64)
        out[np.cumsum(fill + 1) - 1] = gaps - GAP_MAX * fill
        gaps, idx = out, np.cumsum(out) - 1
    return idx, gaps.astype(np.uint8)


def decode(name: str, params: Mapping[str, Any], wire: Mapping[str, np.ndarray],
           shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Decoded]:
    """Check wire tensors against the codec and the model's ``shapes``; return each model tensor, dense
    (float) or, for ``topk``, sparse. Raises ``CodecError`` for anything that does not fit."""
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}")
    expected = set(shapes)
    if name == "int8":
        expected |= {n + "@scale" for n in shapes}
    elif name == "topk":
        return _decode_topk(params, wire, shapes)
    if set(wire) != expected:
        raise CodecError(f"codec {name}: tensors {sorted(wire)} do not match the model's {sorted(expected)}")
    out: Dict[str, Decoded] = {}
    for t, shape in shapes.items():
        size = math.prod(shape)
        if name in ("raw", "float16"):
            a = wire[t]
            want = "e" if name == "float16" else None
            if tuple(a.shape) != tuple(shape) or a.dtype.kind != "f" or (want and a.dtype.char != want):
                raise CodecError(f"tensor {t!r}: {a.dtype}{list(a.shape)}, expected "
                                 f"{'float16' if want else 'float'}{list(shape)}")
            out[t] = a
        else:  # int8
            q, scale = wire[t], wire[t + "@scale"]
            block = params.get("block", 0)
            nblocks = max(1, math.ceil(size / block)) if block else 1
            if q.dtype != np.int8 or tuple(q.shape) != tuple(shape):
                raise CodecError(f"tensor {t!r}: {q.dtype}{list(q.shape)}, expected int8{list(shape)}")
            if scale.dtype != np.float32 or scale.shape != (nblocks,) or (scale < 0).any():
                raise CodecError(f"tensor {t!r}@scale: needs {nblocks} non-negative float32 scales")
            full = _expand_scales(scale, block, size)
            out[t] = q * full if isinstance(full, float) else (q.reshape(-1) * full).reshape(shape)
    return out


def _decode_topk(params: Mapping[str, Any], wire: Mapping[str, np.ndarray],
                 shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Decoded]:
    index, values = params.get("index", "int32"), params.get("values", "float32")
    names = {"gap8": {"@gap"}, "int32": {"@idx"}, "ef": {"@hi", "@lo"}}[index] | {"@val"}
    names |= {"@val@scale"} if values in LEVELS else set()
    if set(wire) != names:
        raise CodecError(f"codec topk: tensors {sorted(wire)} must be exactly {sorted(names)}")
    total = sum(math.prod(s) for s in shapes.values())
    idx = _topk_indices(index, wire, total)
    val = _topk_values(values, wire, idx)
    if idx.size and (idx[0] < 0 or idx[-1] >= total or (np.diff(idx) <= 0).any()):
        raise CodecError(f"codec topk: indices must be strictly increasing and within [0, {total})")
    out: Dict[str, Decoded] = {}
    offset = 0
    for t, shape in shapes.items():
        size = math.prod(shape)
        lo, hi = np.searchsorted(idx, [offset, offset + size])
        out[t] = Sparse(idx[lo:hi] - offset, val[lo:hi], tuple(shape))
        offset += size
    return out


def _topk_indices(index: str, wire: Mapping[str, np.ndarray], total: int) -> np.ndarray:
    """The kept entries' flat indices from their ``index`` encoding (not yet checked for order and range)."""
    if index == "gap8":
        gaps = wire["@gap"]
        if gaps.dtype != np.uint8 or gaps.ndim != 1 or gaps.size > total or (gaps.size and gaps.min() == 0):
            raise CodecError("codec topk: @gap must be flat uint8 gaps of at least 1, no more than the model's size")
        return np.cumsum(gaps, dtype=np.int64) - 1
    if index == "ef":
        try:
            return bitpack.ef_decode(wire["@hi"], wire["@lo"], total)
        except bitpack.BitpackError as exc:
            raise CodecError(f"codec topk: @hi/@lo: {exc}") from None
    idx = wire["@idx"]
    if idx.dtype != np.int32 or idx.ndim != 1 or idx.size > total:
        raise CodecError("codec topk: @idx must be flat int32, no longer than the model's size")
    return idx


def _topk_values(values: str, wire: Mapping[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """The kept entries' values (one per index) from their ``values`` encoding."""
    val = wire["@val"]
    if values == "int4":
        try:
            val = bitpack.int4_unpack(val, idx.size)
        except bitpack.BitpackError as exc:
            raise CodecError(f"codec topk: @val: {exc}") from None
    elif val.ndim != 1 or val.shape != idx.shape or (
            val.dtype != np.int8 if values == "int8" else val.dtype.kind != "f"):
        raise CodecError(f"codec topk: @val must be flat {'int8' if values == 'int8' else 'float'}, one per index")
    if values in LEVELS:
        scale = wire["@val@scale"]
        if scale.dtype != np.float32 or scale.shape != (1,) or not scale[0] >= 0:  # "not >=" also catches NaN
            raise CodecError("codec topk: @val@scale must be one non-negative float32")
        val = (val * np.float64(scale[0])).astype(np.float32)
    return val


def check_params(name: str, params: Any) -> Dict[str, Any]:
    """Validate an envelope's ``codec_params`` (untrusted); returns them."""
    if not isinstance(params, dict):
        raise CodecError("codec_params must be an object")
    allowed = {"int8": {"delta", "block"}, "topk": {"delta", "index", "values"}}.get(name, {"delta"})
    unknown = set(params) - allowed
    if unknown:
        raise CodecError(f"codec_params: unknown fields {sorted(unknown)} for codec {name}")
    if params.get("index", "int32") not in TOPK_INDEX or params.get("values", "float32") not in TOPK_VALUES:
        raise CodecError(f"codec_params: index must be one of {TOPK_INDEX}, values one of {TOPK_VALUES}")
    if not isinstance(params.get("delta", False), bool):
        raise CodecError("codec_params.delta must be true or false")
    block = params.get("block", 0)
    if not isinstance(block, int) or isinstance(block, bool) or not 0 <= block <= MAX_BLOCK:
        raise CodecError(f"codec_params.block must be an integer in [0, {MAX_BLOCK}]")
    return params


def to_dense(tensors: Mapping[str, Decoded], dtype: type = np.float32) -> Dict[str, np.ndarray]:
    """Every decoded tensor as a dense array of ``dtype``."""
    return {k: (v.dense() if isinstance(v, Sparse) else v).astype(dtype, copy=False) for k, v in tensors.items()}


def norm(tensors: Mapping[str, Decoded], reference: Optional[Mapping[str, np.ndarray]]) -> float:
    """L2 norm of a change: of the tensors themselves, or of their difference to ``reference``."""
    total = 0.0
    for k, v in tensors.items():
        if isinstance(v, Sparse):
            total += float(np.dot(v.val.astype(np.float64), v.val))
        else:
            d = np.asarray(v, np.float64) - (reference[k] if reference is not None else 0.0)
            total += float(np.vdot(d, d))
    return math.sqrt(total)


def max_abs(tensors: Mapping[str, Decoded]) -> float:
    """The largest magnitude among the decoded values (0 for no values)."""
    out = 0.0
    for v in tensors.values():
        values = v.val if isinstance(v, Sparse) else np.asarray(v)
        if values.size:
            out = max(out, float(np.max(np.abs(values))))
    return out


class UpdateEncoder:
    """A node's side of a codec: turns trained weights into wire tensors, keeping the error-feedback residual."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.residual: Dict[str, np.ndarray] = {}

    def encode(self, weights: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Wire tensors for weights trained from ``start`` (the global model as received, in its order)."""
        c = self.codec
        # In the order of the global model's tensors: top-k indices count through them in that order.
        if c.delta:
            values = {k: np.asarray(weights[k], np.float64) - np.asarray(ref, np.float64) for k, ref in start.items()}
        else:  # no arithmetic: no float64 copies
            values = {k: np.asarray(weights[k]) for k in start}
        if c.error_feedback:
            values = {
                k: v + self.residual[k] if k in self.residual and self.residual[k].shape == v.shape else v
                for k, v in values.items()
            }
        wire, seen = compress(c, values)
        if c.error_feedback:
            self.residual = {k: values[k] - seen[k] for k in values}
        return wire
