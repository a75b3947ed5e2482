"""Protocol v1 binary envelope: the payload format for models, updates and partial aggregates.

Layout (all integers little-endian; see docs/protocol.md for the normative text)::

    offset  size  field
    0       4     magic b"FDMQ"
    4       1     version (1)
    5       1     kind (1 model, 2 update, 3 partial aggregate)
    6       2     flags (0; reserved)
    8       4     header_len  (bytes of the UTF-8 JSON header)
    12      8     body_len    (bytes of tensor data)
    20      H     header: a JSON object (see ``Envelope`` fields)
    20+H    B     body: every tensor's raw little-endian C-order bytes, in header order, no padding
    20+H+B  4     CRC-32 (IEEE, as zlib.crc32) of every byte before it

Nothing is unpickled or evaluated. Sizes are checked against the message length and the
configured limits before any array is created; arrays are read-only views of the message.
"""

from __future__ import annotations

import enum
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fedmq.shared.codecs import CODECS, CodecError, check_params

MAGIC = b"FDMQ"
VERSION = 1
PREFIX = struct.Struct("<4sBBHIQ")
PREFIX_LEN = PREFIX.size  # 20
CRC_LEN = 4
ALIGN = 8
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 4096
MAX_NDIM = 8
MAX_NAME_LEN = 128

# Wire dtype names -> numpy little-endian dtypes. Only these may appear on the wire.
DTYPES: Dict[str, np.dtype] = {
    "f2": np.dtype("<f2"),
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
    "i1": np.dtype("i1"),
    "u1": np.dtype("u1"),
    "i4": np.dtype("<i4"),
    "i8": np.dtype("<i8"),
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
HEADER_FIELDS = {
    "federation", "round", "attempt", "sender", "model_version", "codec", "codec_params",
    "tensors", "samples", "metrics", "meta",
}


class Kind(enum.IntEnum):
    """What an envelope carries."""

    MODEL = 1
    UPDATE = 2
    PARTIAL = 3


class Rejected(ValueError):
    """A message refused: ``reason`` is its short, stable name (the label of the rejections counter and of
    ``fedmq_rejections_total``), the message says what exactly was wrong."""

    default_reason = "malformed"

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class EnvelopeError(Rejected):
    """A payload that is not a valid protocol v1 envelope; the message says why."""


class EnvelopeRefused(Rejected):
    """A valid envelope that is not what the topic it came on expects (kind, federation, sender)."""


@dataclass
class Envelope:
    """A decoded (or to-be-encoded) protocol v1 message.

    ``samples`` is the sample count of an update, or the total weight of a partial aggregate.
    ``metrics`` holds finite numbers only; ``meta`` is a small JSON object (model spec, node lists).
    """

    kind: Kind
    federation: str
    round: int
    sender: str
    model_version: int
    tensors: Dict[str, np.ndarray]
    samples: float = 0
    attempt: int = 0
    codec: str = "raw"
    codec_params: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)


def encode(env: Envelope) -> bytes:
    """Serialise an envelope; tensors are written in insertion order as little-endian C-order bytes."""
    specs = []
    arrays = []
    for name, arr in env.tensors.items():
        a = np.asarray(arr)
        wire = _DTYPE_NAMES.get(a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype)
        if wire is None:
            raise EnvelopeError(f"tensor {name!r}: dtype {a.dtype} is not allowed on the wire")
        a = a.astype(DTYPES[wire], order="C", copy=False)  # keeps 0-d arrays 0-d
        specs.append({"name": name, "dtype": wire, "shape": list(a.shape)})
        arrays.append(a)
    header = {
        "federation": env.federation,
        "round": int(env.round),
        "attempt": int(env.attempt),
        "sender": env.sender,
        "model_version": int(env.model_version),
        "codec": env.codec,
        **({"codec_params": env.codec_params} if env.codec_params else {}),
        "tensors": specs,
        "samples": env.samples,
        "metrics": {k: float(v) for k, v in env.metrics.items()},
        "meta": env.meta,
    }
    hbytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    hbytes += b" " * (-(PREFIX_LEN + len(hbytes)) % ALIGN)  # the body starts 8-aligned: fast, copy-free reads
    blen = sum(a.nbytes for a in arrays)
    out = bytearray(PREFIX_LEN + len(hbytes) + blen + CRC_LEN)  # one buffer, every tensor copied once
    PREFIX.pack_into(out, 0, MAGIC, VERSION, int(env.kind), 0, len(hbytes), blen)
    offset = PREFIX_LEN + len(hbytes)
    out[PREFIX_LEN:offset] = hbytes
    dst = np.frombuffer(out, dtype=np.uint8)
    for a in arrays:
        dst[offset:offset + a.nbytes] = a.reshape(-1).view(np.uint8)
        offset += a.nbytes
    del dst  # release the buffer export before the bytes copy
    struct.pack_into("<I", out, offset, zlib.crc32(memoryview(out)[:offset]) & 0xFFFFFFFF)
    return bytes(out)


def _reject_duplicates(pairs: list) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise EnvelopeError(f"header: duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> None:
    raise EnvelopeError(f"header: {name} is not allowed in JSON")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_text(v: Any, what: str, max_len: int = 256) -> str:
    if not (isinstance(v, str) and 0 < len(v) <= max_len):
        raise EnvelopeError(f"header: {what} must be a non-empty string of at most {max_len} characters")
    return v


def decode(data: bytes, *, max_bytes: Optional[int] = None, require_finite: bool = True) -> Envelope:
    """Parse and validate one envelope.

    Raises ``EnvelopeError`` (with the reason) for anything malformed: wrong magic or version,
    truncation, sizes that do not add up, a bad checksum, unknown dtypes, NaN or Inf
    (``require_finite``), or a message over ``max_bytes``.
    """
    kind, hlen, blen = _check_frame(data, max_bytes)
    header = _parse_header(bytes(data[PREFIX_LEN : PREFIX_LEN + hlen]))
    fed = _check_text(header.get("federation"), "federation")
    sender = _check_text(header.get("sender"), "sender")
    rnd, attempt, mver = header.get("round", -1), header.get("attempt", 0), header.get("model_version", -1)
    for what, v in (("round", rnd), ("attempt", attempt), ("model_version", mver)):
        if not (_is_int(v) and 0 <= v < 2**53):
            raise EnvelopeError(f"header: {what} must be a non-negative integer")
    codec = header.get("codec", "raw")
    if codec not in CODECS:
        raise EnvelopeError(f"header: unknown codec {codec!r} (protocol 1.1 knows {', '.join(CODECS)})")
    try:
        codec_params = check_params(codec, header.get("codec_params", {}))
    except CodecError as exc:
        raise EnvelopeError(f"header: {exc}") from None
    samples = header.get("samples", 0)
    if not (_is_num(samples) and 0 <= samples < 2**53):
        raise EnvelopeError("header: samples must be a finite number >= 0")
    metrics, meta = _check_metrics(header.get("metrics", {})), header.get("meta", {})
    if not isinstance(meta, dict):
        raise EnvelopeError("header: meta must be an object")
    tensors = _read_tensors(data, header.get("tensors"), PREFIX_LEN + hlen, PREFIX_LEN + hlen + blen, require_finite)
    return Envelope(
        kind=Kind(kind), federation=fed, round=rnd, attempt=attempt, sender=sender,
        model_version=mver, tensors=tensors, samples=samples, codec=codec, codec_params=codec_params,
        metrics=metrics, meta=meta,
    )


def _check_frame(data: bytes, max_bytes: Optional[int]) -> Tuple[int, int, int]:
    """(kind, header length, body length) of a frame whose fixed prefix, sizes and checksum hold."""
    n = len(data)
    if max_bytes is not None and n > max_bytes:
        raise EnvelopeError(f"message is {n} bytes, over the limit of {max_bytes}", "over size limit")
    if n < PREFIX_LEN + CRC_LEN:
        raise EnvelopeError(f"truncated: {n} bytes is shorter than the fixed {PREFIX_LEN + CRC_LEN}")
    magic, version, kind, flags, hlen, blen = PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise EnvelopeError(f"wrong magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise EnvelopeError(f"unsupported envelope version {version} (this side speaks {VERSION})")
    if kind not in Kind._value2member_map_:
        raise EnvelopeError(f"unknown kind {kind}")
    if flags != 0:
        raise EnvelopeError(f"unknown flags 0x{flags:04x}")
    if hlen > MAX_HEADER_BYTES:
        raise EnvelopeError(f"header claims {hlen} bytes, over the {MAX_HEADER_BYTES} limit")
    expected = PREFIX_LEN + hlen + blen + CRC_LEN
    if expected != n:
        raise EnvelopeError(f"length mismatch: header says {expected} bytes in all, message has {n}")
    (crc,) = struct.unpack_from("<I", data, n - CRC_LEN)
    if zlib.crc32(memoryview(data)[: n - CRC_LEN]) & 0xFFFFFFFF != crc:
        raise EnvelopeError("checksum mismatch (corrupted message)", "bad checksum")
    return kind, hlen, blen


def _parse_header(raw: bytes) -> Dict[str, Any]:
    """The JSON header as an object with known fields only (no duplicate keys, NaN or Infinity)."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EnvelopeError(f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise EnvelopeError("header must be a JSON object")
    unknown = set(header) - HEADER_FIELDS
    if unknown:
        raise EnvelopeError(f"header: unknown fields {sorted(unknown)}")
    return header


def _check_metrics(metrics: Any) -> Dict[str, float]:
    """At most 256 finite numbers by name."""
    if not (isinstance(metrics, dict) and len(metrics) <= 256):
        raise EnvelopeError("header: metrics must be an object of at most 256 entries")
    for k, v in metrics.items():
        if not _is_num(v):
            raise EnvelopeError(f"header: metric {k!r} must be a finite number")
    return {k: float(v) for k, v in metrics.items()}


def _read_tensors(data: bytes, specs: Any, offset: int, end: int, require_finite: bool) -> Dict[str, np.ndarray]:
    """The tensors the header's specs describe, read (without copying, when aligned) from the body
    ``data[offset:end]``, which they must cover exactly."""
    if not (isinstance(specs, list) and len(specs) <= MAX_TENSORS):
        raise EnvelopeError(f"header: tensors must be a list of at most {MAX_TENSORS}")
    tensors: Dict[str, np.ndarray] = {}
    for i, spec in enumerate(specs):
        name, dt, shape, count = _tensor_spec(spec, i, end - offset)
        if name in tensors:
            raise EnvelopeError(f"tensor {name!r} appears twice")
        arr = np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(shape)
        if not arr.flags.aligned:  # a sender that did not pad: numpy is many times slower on unaligned data
            arr = arr.copy()
            arr.flags.writeable = False
        if require_finite and dt.kind == "f" and count and not np.isfinite(arr).all():
            raise EnvelopeError(f"tensor {name!r} contains NaN or Inf", "NaN or Inf")
        tensors[name] = arr
        offset += count * dt.itemsize
    if offset != end:
        raise EnvelopeError(f"body has {end - offset} bytes not described by any tensor")
    return tensors


def _tensor_spec(spec: Any, i: int, room: int) -> Tuple[str, np.dtype, List[int], int]:
    """(name, dtype, shape, element count) of tensor spec ``i``, whose bytes must fit in ``room``."""
    if not (isinstance(spec, dict) and set(spec) == {"name", "dtype", "shape"}):
        raise EnvelopeError(f"tensor #{i}: needs exactly name, dtype, shape")
    name = _check_text(spec["name"], "tensor name", MAX_NAME_LEN)
    dt = DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    if dt is None:
        raise EnvelopeError(f"tensor {name!r}: unknown dtype {spec['dtype']!r}")
    shape = spec["shape"]
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM):
        raise EnvelopeError(f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} dimensions")
    count = 1
    for d in shape:
        if not (_is_int(d) and 0 <= d):
            raise EnvelopeError(f"tensor {name!r}: bad dimension {d!r}")
        count *= d
        # Python ints do not overflow, but stop as soon as the claim exceeds the body.
        if count * dt.itemsize > room:
            raise EnvelopeError(f"tensor {name!r}: shape {shape} needs more bytes than the body holds")
    return name, dt, shape, count

