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


def test_header_only_chunks_cannot_grow_memory_without_bound():
    """150,000 chunk headers with no data, each announcing another message (a memory attack): the pending
    sets stay bounded per topic and in all, and memory stays small."""
    import hashlib
    import tracemalloc

    from fedmq.shared.chunks import HEADER, MAGIC, VERSION, Reassembler

    r = Reassembler(1 << 20)
    tracemalloc.start()
    for i in range(150_000):
        digest = hashlib.sha256(str(i).encode()).digest()
        topic = f"fedmq/v1/f/g/_update/n{i % 50}/_chunk/0"
        r.add(topic, HEADER.pack(MAGIC, VERSION, b"\0\0\0", digest, 0, 2, 100))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(r.pending) <= 50 * 4 and peak < 5_000_000, (len(r.pending), peak)
    assert all(len(keys) <= 4 for keys in r.sets_of.values())


def test_a_chunked_message_counts_once_against_the_senders_rate():
    from fedmq.coordinator.service import CoordinatorService
    from fedmq.shared.chunks import split
    from fedmq.shared.mqtt import Message
    from fedmq.shared.topicmap import parse_topic_map

    tm = parse_topic_map("federation: f\nmodel: {kind: softmax_regression, features: 3, classes: [0, 1]}\n"
                         "limits: {max_messages_per_node_s: 0.01, message_burst: 3}\ntree: {nodes: [a]}\n")
    service = CoordinatorService(tm)
    topic = "fedmq/v1/f/_update/a"
    for m in range(5):  # five chunked messages: the first three are taken whole, then the burst is spent
        frames = split(bytes([m]) * 4000, 512)
        for i, frame in enumerate(frames):
            service.link.inbox.put(Message(f"{topic}/_chunk/{i}", frame, False))
    taken = []
    while (msg := service.link.get(timeout=0)) is not None:
        taken.append(msg)
    assert len(frames) > 1 and len(taken) == 3 and service.rejections.total["rate limit"] == 2 * len(frames)
