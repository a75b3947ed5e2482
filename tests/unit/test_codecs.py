"""Update codecs: what each puts on the wire, what the receiver reconstructs, and what it refuses."""

import numpy as np
import pytest

from fedmq.coordinator.aggregate import WeightedSum
from fedmq.shared import codecs
from fedmq.shared.codecs import Codec, CodecError, UpdateEncoder
from fedmq.shared.envelope import Envelope, EnvelopeError, Kind, decode, encode

SHAPES = {"w": (64, 10), "b": (10,)}
GAP8 = {"delta": True, "index": "gap8", "values": "int8"}
EF4 = {"delta": True, "index": "ef", "values": "int4"}
ONE = np.ones(1, np.float32)


def ef4(hi=np.array([0b10100000], np.uint8), lo=np.zeros(2, np.uint8), val=np.array([0x17], np.uint8)):
    """topk wire tensors with Elias-Fano indices and int4 values; valid as they stand (indices 0 and 256)."""
    return {"@hi": hi, "@lo": lo, "@val": val, "@val@scale": ONE}


def weights(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(0, scale, s)).astype(np.float32) for k, s in SHAPES.items()}


def roundtrip(codec, tensors):
    wire, seen = codecs.compress(codec, tensors)
    env = Envelope(kind=Kind.UPDATE, federation="f", round=1, sender="n", model_version=0, tensors=wire, samples=5,
                   codec=codec.name, codec_params=codec.params())
    data = encode(env)
    back = decode(data)
    return data, codecs.to_dense(codecs.decode(back.codec, back.codec_params, back.tensors, SHAPES), np.float64), seen


@pytest.mark.parametrize("codec,tol", [
    (Codec("raw"), 1e-7), (Codec("float16"), 1e-3), (Codec("int8", delta=True), 0.02),
    (Codec("int8", delta=True, block=64), 0.02),
])
def test_dense_codecs_reconstruct_within_their_precision(codec, tol):
    w = weights()
    data, got, seen = roundtrip(codec, w)
    for k in SHAPES:
        assert got[k].shape == SHAPES[k]
        np.testing.assert_allclose(got[k], seen[k], rtol=0, atol=1e-12)  # the sender knows exactly what arrives
        assert np.max(np.abs(got[k] - w[k])) <= tol * np.max(np.abs(w[k])) + 1e-7


def test_sizes_shrink_as_promised():
    w = {"w": np.random.default_rng(1).normal(0, 1, (1000, 100)).astype(np.float32)}
    shapes = {"w": (1000, 100)}
    sizes = {}
    for c in (Codec("raw"), Codec("float16"), Codec("int8", delta=True), Codec("topk", delta=True, fraction=0.01)):
        wire, _ = codecs.compress(c, w)
        env = Envelope(kind=Kind.UPDATE, federation="f", round=1, sender="n", model_version=0, tensors=wire,
                       samples=1, codec=c.name, codec_params=c.params())
        data = encode(env)
        codecs.decode(c.name, c.params(), decode(data).tensors, shapes)
        sizes[c.name] = len(data)
    assert sizes["raw"] / sizes["float16"] > 1.99
    assert sizes["raw"] / sizes["int8"] > 3.95
    assert sizes["raw"] / sizes["topk"] > 150  # 2 bytes per kept entry (200x) plus the header


@pytest.mark.parametrize("index,values", [("gap8", "int8"), ("int32", "float32"), ("gap8", "float32"),
                                          ("ef", "int4"), ("ef", "int8"), ("gap8", "int4")])
def test_topk_keeps_the_largest_entries_and_error_feedback_keeps_the_rest(index, values):
    start = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    codec = Codec("topk", delta=True, fraction=0.1, error_feedback=True, index=index, values=values)
    enc = UpdateEncoder(codec)
    w = weights(3)
    wire = enc.encode(w, start)
    sent = codecs.to_dense(codecs.decode("topk", codec.params(), wire, SHAPES), np.float64)
    both = np.concatenate([np.abs(w["w"]).ravel(), np.abs(w["b"])])
    assert set(np.flatnonzero(np.concatenate([sent["w"].ravel(), sent["b"]]))) == set(np.argsort(both)[-65:])
    for k in SHAPES:  # sent + residual == the whole change: nothing is lost, only delayed
        np.testing.assert_allclose(sent[k] + enc.residual[k], w[k], atol=1e-6)
    # Over many rounds, what was sent plus what is still held back is exactly everything: nothing is lost.
    total = {k: sent[k].copy() for k in SHAPES}
    for _ in range(30):
        wire = enc.encode(w, start)
        for k, v in codecs.to_dense(codecs.decode("topk", codec.params(), wire, SHAPES), np.float64).items():
            total[k] += v
    for k in SHAPES:
        np.testing.assert_allclose(total[k] + enc.residual[k], 31 * w[k].astype(np.float64), atol=1e-4)
        assert np.abs(enc.residual[k]).max() < 31 * np.abs(w[k]).max() / 2  # and most of it has gone out


def test_delta_is_against_the_model_the_node_started_from():
    start = weights(5)
    trained = {k: v + 0.01 for k, v in start.items()}
    wire = UpdateEncoder(Codec("int8", delta=True)).encode(trained, start)
    got = codecs.to_dense(codecs.decode("int8", {"delta": True, "block": 0}, wire, SHAPES), np.float64)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], 0.01, atol=1e-6)


def test_streaming_sum_of_sparse_and_dense_updates_is_exact():
    a, b = weights(1), weights(2)
    c = Codec("topk", delta=True, fraction=0.2)
    sa = codecs.decode("topk", c.params(), codecs.compress(c, a)[0], SHAPES)
    s = WeightedSum()
    s.add(sa, 3.0)
    s.add(b, 1.0)
    dense_a = codecs.to_dense(sa, np.float64)
    for k in SHAPES:
        np.testing.assert_allclose(s.sums[k], 3 * dense_a[k] + b[k], atol=1e-6)


@pytest.mark.parametrize("name,params,wire,why", [
    ("int8", {"block": 0}, {"w": np.zeros((64, 10), np.int8), "b": np.zeros(10, np.int8)}, "do not match"),
    ("int8", {"block": 0}, {"w": np.zeros((64, 10), np.int8), "w@scale": np.ones(2, np.float32),
                            "b": np.zeros(10, np.int8), "b@scale": np.ones(1, np.float32)}, "scales"),
    ("int8", {"block": 0}, {"w": np.zeros((64, 10), np.int8), "w@scale": -np.ones(1, np.float32),
                            "b": np.zeros(10, np.int8), "b@scale": np.ones(1, np.float32)}, "non-negative"),
    ("topk", {}, {"@idx": np.array([5, 3], np.int32), "@val": np.ones(2, np.float32)}, "strictly increasing"),
    ("topk", {}, {"@idx": np.array([650], np.int32), "@val": np.ones(1, np.float32)}, "within"),
    ("topk", {}, {"@idx": np.array([1, 1], np.int32), "@val": np.ones(2, np.float32)}, "strictly increasing"),
    ("topk", {}, {"@idx": np.array([1], np.int64), "@val": np.ones(1, np.float32)}, "int32"),
    ("topk", {}, {"w@idx": np.array([1], np.int32), "w@val": np.ones(1, np.float32)}, "must be exactly"),
    ("topk", GAP8, {"@gap": np.array([3, 0], np.uint8), "@val": np.ones(2, np.int8), "@val@scale": ONE}, "at least 1"),
    ("topk", GAP8, {"@gap": np.full(3, 255, np.uint8), "@val": np.ones(3, np.int8), "@val@scale": ONE}, "within"),
    ("topk", GAP8, {"@gap": np.ones(2, np.int16), "@val": np.ones(2, np.int8), "@val@scale": ONE}, "uint8"),
    ("topk", GAP8, {"@gap": np.ones(2, np.uint8), "@val": np.ones(3, np.int8), "@val@scale": ONE}, "one per index"),
    ("topk", GAP8, {"@gap": np.ones(2, np.uint8), "@val": np.ones(2, np.float32), "@val@scale": ONE}, "int8"),
    ("topk", GAP8, {"@gap": np.ones(2, np.uint8), "@val": np.ones(2, np.int8),
                    "@val@scale": np.array([np.nan], np.float32)}, "non-negative"),
    ("topk", GAP8, {"@gap": np.ones(2, np.uint8), "@val": np.ones(2, np.int8)}, "must be exactly"),
    # Elias-Fano: two indices in 650 entries have 8 low bits each; @hi 101 puts them in buckets 0 and 1.
    ("topk", EF4, ef4(lo=np.zeros(3, np.uint8)), "low stream must be 2 bytes"),
    ("topk", EF4, ef4(hi=np.array([0b10100000, 0], np.uint8)), "end with a 1 bit"),
    ("topk", EF4, ef4(hi=np.full(200, 255, np.uint8)), "at most 1300 bits"),
    ("topk", EF4, ef4(hi=np.array([0b10101000], np.uint8), lo=np.array([0, 0, 1], np.uint8),
                      val=np.array([0x17, 0x10], np.uint8)), "padding bits"),  # 3 indices of 7 low bits
    ("topk", EF4, ef4(hi=np.array([0b11000000], np.uint8)), "strictly increasing"),
    ("topk", EF4, ef4(val=np.array([0x18], np.uint8)), r"\[-7, 7\]"),
    ("topk", EF4, ef4(val=np.array([0x17, 0], np.uint8)), "1 uint8 bytes for 2 values"),
    ("topk", EF4, ef4(hi=np.array([0b10000000], np.uint8)), "zero padding nibble"),
    ("topk", EF4, ef4(hi=np.array([0b10100000], np.uint16)), "flat uint8"),
    ("topk", EF4, {"@gap": np.ones(2, np.uint8), "@val": np.array([0x17], np.uint8), "@val@scale": ONE},
     "must be exactly"),
    ("float16", {}, {"w": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float16)}, "expected float16"),
    ("raw", {}, {"w": np.zeros((64, 9), np.float32), "b": np.zeros(10, np.float32)}, "expected float"),
])
def test_bad_codec_tensors_are_refused(name, params, wire, why):
    with pytest.raises(CodecError, match=why):
        codecs.decode(name, params, wire, SHAPES)


@pytest.mark.parametrize("header_codec,params,why", [
    ("zstd", {}, "unknown codec"), ("int8", {"block": -1}, "block"), ("raw", {"block": 4}, "unknown fields"),
    ("topk", {"delta": "yes"}, "delta"), ("raw", [], "object"), ("topk", {"index": "gap4"}, "index must be"),
    ("int8", {"index": "gap8"}, "unknown fields"),
])
def test_envelope_refuses_unknown_codecs_and_bad_params(header_codec, params, why):
    env = Envelope(kind=Kind.UPDATE, federation="f", round=1, sender="n", model_version=0, tensors={}, samples=1)
    data = encode(env).replace(b'"codec":"raw"', b'"codec":"' + header_codec.encode() + b'","codec_params":'
                               + __import__("json").dumps(params).encode())
    import struct
    import zlib
    # fix the header length and checksum so that only the codec is wrong
    hlen = struct.unpack_from("<I", data, 8)[0] + len(data) - len(encode(env))
    data = data[:8] + struct.pack("<I", hlen) + data[12:-4]
    data += struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)
    with pytest.raises(EnvelopeError, match=why):
        decode(data)


def test_topk_gaps_over_255_are_bridged_by_zero_fillers():
    flat = np.zeros(2000)
    flat[[3, 600, 1999]] = [1.0, -2.0, 3.0]  # gaps of 597 and 1399: fillers needed
    shapes = {"w": (2000,)}
    wire, seen = codecs.compress(Codec("topk", delta=True, fraction=3 / 2000, index="gap8", values="int8"), {"w": flat})
    assert wire["@gap"].dtype == np.uint8 and wire["@gap"].max() == 255
    got = codecs.to_dense(codecs.decode("topk", GAP8, wire, shapes), np.float64)["w"]
    np.testing.assert_allclose(got, seen["w"], atol=0)
    assert set(np.flatnonzero(got)) == {3, 600, 1999}
    np.testing.assert_allclose(got[[3, 600, 1999]], [1.0, -2.0, 3.0], rtol=0.01)


@pytest.mark.parametrize("meta,why", [
    ({"name": "topk", "delta": False}, "needs delta"), ({"name": "lz4"}, "unknown codec"),
    ({"name": "int8", "block": 1.5}, "block"), ({"name": "topk", "delta": True, "fraction": 0}, "fraction"),
    ("int8", "object"), ({"name": "raw", "error_feedback": True}, "needs delta"),
])
def test_codec_announcements_from_the_network_are_checked(meta, why):
    with pytest.raises(CodecError, match=why):
        Codec.from_meta(meta)
