"""Protocol v1 envelope: round trips and every kind of bad input."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmq.shared.envelope import PREFIX, Envelope, EnvelopeError, Kind, decode, encode


def make(**kw):
    base = dict(kind=Kind.UPDATE, federation="f", round=3, sender="n1", model_version=2,
                tensors={"coef": np.arange(6, dtype=np.float32).reshape(2, 3), "intercept": np.ones(2, np.float32)},
                samples=42, metrics={"loss": 0.5})
    base.update(kw)
    return Envelope(**base)


def reseal(body: bytes) -> bytes:
    """Recompute the CRC so that only the tampered field is wrong."""
    return body + struct.pack("<I", zlib.crc32(body))


def test_round_trip_keeps_everything():
    env = decode(encode(make()))
    assert env.kind == Kind.UPDATE and env.round == 3 and env.sender == "n1" and env.samples == 42
    assert list(env.tensors) == ["coef", "intercept"]
    np.testing.assert_array_equal(env.tensors["coef"], np.arange(6).reshape(2, 3))
    assert env.metrics == {"loss": 0.5}


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
arrays = hnp.arrays(st.sampled_from([np.float32, np.float64, np.float16, np.int8, np.uint8, np.int32]),
                    hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
                    elements={"allow_nan": False, "allow_infinity": False})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, arrays, max_size=5), st.integers(0, 2**40), st.sampled_from(list(Kind)), names)
def test_property_round_trip(tensors, rnd, kind, sender):
    env = decode(encode(make(tensors=tensors, round=rnd, kind=kind, sender=sender)))
    assert env.round == rnd and env.kind == kind and env.sender == sender
    assert list(env.tensors) == list(tensors)
    for k, v in tensors.items():
        assert env.tensors[k].dtype == v.dtype.newbyteorder("<") and env.tensors[k].shape == v.shape
        np.testing.assert_array_equal(env.tensors[k], v)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_rejected_not_crashing(data):
    with pytest.raises(EnvelopeError):
        decode(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200))
def test_any_truncation_is_rejected(cut):
    msg = encode(make())
    with pytest.raises(EnvelopeError):
        decode(msg[: min(cut, len(msg) - 1)])


def test_bit_flip_fails_checksum():
    msg = bytearray(encode(make()))
    msg[-10] ^= 0x01
    with pytest.raises(EnvelopeError, match="checksum"):
        decode(bytes(msg))


def test_wrong_magic_and_version():
    msg = encode(make())
    with pytest.raises(EnvelopeError, match="magic"):
        decode(reseal(b"XXXX" + msg[4:-4]))
    with pytest.raises(EnvelopeError, match="version"):
        decode(reseal(msg[:4] + bytes([9]) + msg[5:-4]))


def _with_header(header: bytes, body: bytes = b"") -> bytes:
    return reseal(PREFIX.pack(b"FDMQ", 1, 2, 0, len(header), len(body)) + header + body)


def test_header_claiming_10_gb_is_rejected_before_allocating():
    msg = PREFIX.pack(b"FDMQ", 1, 2, 0, 0xFFFFFFF0, 0) + b"{}"  # the largest header the u32 field can claim
    with pytest.raises(EnvelopeError, match="header claims"):
        decode(reseal(msg))
    msg = PREFIX.pack(b"FDMQ", 1, 2, 0, 2, 10 * 2**30) + b"{}"
    with pytest.raises(EnvelopeError, match="length mismatch"):
        decode(reseal(msg))


def _header(shape, dtype="f4", **extra):
    import json

    h = {"federation": "f", "round": 1, "sender": "n", "model_version": 0,
         "tensors": [{"name": "w", "dtype": dtype, "shape": shape}], "samples": 1}
    h.update(extra)
    return json.dumps(h).encode()


def test_shape_product_overflow_is_rejected():
    with pytest.raises(EnvelopeError, match="needs more bytes"):
        decode(_with_header(_header([2**40, 2**40, 2**40]), b"\0" * 16))


def test_shape_that_does_not_match_the_body():
    with pytest.raises(EnvelopeError, match="not described"):
        decode(_with_header(_header([2]), b"\0" * 12))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_rejected(bad):
    with pytest.raises(EnvelopeError, match="NaN or Inf"):
        decode(encode(make(tensors={"w": np.array([1.0, bad], np.float32)})))


@pytest.mark.parametrize("header,match", [
    (_header([1], dtype="O"), "unknown dtype"),
    (_header([1], samples=-5), "samples"),
    (_header([1], samples=1e300), "samples"),
    (_header([1], extra=1), "unknown fields"),
    (_header([1], codec="zip"), "codec"),
    (_header([1], round=-1), "round"),
    (_header([1], metrics={"x": "y"}), "metric"),
    (b'{"federation":"f","federation":"g"}', "duplicate"),
    (b'{"a": NaN}', "not allowed"),
    (b"\xff\xfe", "UTF-8"),
    (b"[]", "object"),
])
def test_bad_headers(header, match):
    with pytest.raises(EnvelopeError, match=match):
        decode(_with_header(header, b"\0" * 4))


def test_size_limit():
    with pytest.raises(EnvelopeError, match="over the limit"):
        decode(encode(make()), max_bytes=100)
