"""Chunking: split, reassemble in any order, and refuse what does not add up."""

import os

import pytest

from fedmq.shared import chunks
from fedmq.shared.chunks import ChunkError, Reassembler

T = "fedmq/v1/f/g/_update/n1"


def frames(payload, size=1024):
    return [(chunks.chunk_topic(T, i), f) for i, f in enumerate(chunks.split(payload, size))]


def test_chunks_fit_the_cap_and_reassemble_in_any_order_with_duplicates():
    msg = os.urandom(10_000)
    parts = frames(msg)
    assert len(parts) == 11 and all(len(f) <= 1024 for _, f in parts)
    r = Reassembler(1 << 20)
    order = parts[::-1] + [parts[3]]
    out = [r.add(t, f) for t, f in order[:-1]]
    assert out[:-1] == [None] * 10 and out[-1] == (T, msg)
    assert r.add(*order[-1]) is None and not r.pending  # a late duplicate is recognised


def test_missing_chunk_times_out_and_memory_is_released():
    r = Reassembler(1 << 20, timeout_s=5)
    for t, f in frames(os.urandom(5000))[:-1]:
        assert r.add(t, f, now=0.0) is None
    assert r.pending_bytes > 0
    assert r.expire(now=3.0) == []
    assert r.expire(now=6.0) == [(T, 5, 6)]
    assert r.pending_bytes == 0 and not r.pending


def test_corrupted_chunk_fails_the_whole_message_check():
    parts = frames(os.urandom(3000))
    t, f = parts[1]
    parts[1] = (t, f[:100] + bytes([f[100] ^ 1]) + f[101:])
    r = Reassembler(1 << 20)
    with pytest.raises(ChunkError, match="SHA-256"):
        for t, f in parts:
            r.add(t, f)


@pytest.mark.parametrize("mutate,why", [
    (lambda t, f: (t, f[:20]), "shorter"),
    (lambda t, f: (t, b"XXXX" + f[4:]), "not a version 1 chunk"),
    (lambda t, f: (t.replace("_chunk/0", "_chunk/1"), f), "inconsistent"),
    (lambda t, f: (t, f[:48] + (10**9).to_bytes(8, "little") + f[56:]), "over the limit"),
    (lambda t, f: ("fedmq/v1/f/g/_update/n1", f), "not a chunk topic"),
])
def test_malformed_chunks_are_refused(mutate, why):
    t, f = frames(os.urandom(3000))[0]
    with pytest.raises(ChunkError, match=why):
        Reassembler(1 << 20).add(*mutate(t, f))


def test_chunks_that_overflow_the_announced_length_are_refused():
    parts = frames(os.urandom(3000))
    r = Reassembler(1 << 20)
    r.add(*parts[0])
    t, f = parts[1]
    with pytest.raises(ChunkError, match="more than the announced"):
        r.add(t, f + os.urandom(3000))


def test_pending_memory_is_bounded():
    r = Reassembler(100_000, max_pending_bytes=20_000)
    for k in range(10):
        for t, f in frames(os.urandom(9000))[:-1]:
            r.add(t, f)
    assert r.pending_bytes <= 20_000 + 1024
