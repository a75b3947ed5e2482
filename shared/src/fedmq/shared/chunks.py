"""Chunking for messages over a broker's payload limit (docs/protocol.md, section 4.5).

A message ``M`` for topic ``T`` that is larger than the configured maximum is sent as ``count`` chunks,
chunk ``i`` on topic ``T/_chunk/<i>`` with ``T``'s QoS and retain flag. Each chunk is::

    offset  size  field
    0       4     magic b"FDMK"
    4       1     version (1)
    5       3     reserved (0)
    8       32    SHA-256 of the whole message M
    40      4     index i (u32, little-endian)
    44      4     count (u32)
    48      8     total length of M (u64)
    56      ...   the bytes of M from offset i * (chunk payload size)

The receiver collects chunks by (T, SHA-256), and delivers M once all ``count`` have arrived and the
SHA-256 of their concatenation matches; incomplete sets are dropped after a timeout.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

MAGIC = b"FDMK"
VERSION = 1
HEADER = struct.Struct("<4sB3s32sIIQ")
HEADER_LEN = HEADER.size  # 56
SUFFIX = "/_chunk/"
MIN_CHUNK_PAYLOAD = 256


class ChunkError(ValueError):
    """A chunk that is malformed or does not fit the others of its message."""


def chunk_topic(topic: str, index: int) -> str:
    """Topic of chunk ``index`` of a message for ``topic``."""
    return f"{topic}{SUFFIX}{index}"


def chunk_filter(topic: str) -> str:
    """The topic filter matching every chunk of messages for ``topic`` (a name or a filter)."""
    return f"{topic}{SUFFIX}+"


def base_topic(topic: str) -> Optional[str]:
    """The message topic a chunk topic belongs to, or None if ``topic`` is not a chunk topic."""
    head, sep, index = topic.rpartition(SUFFIX)
    return head if sep and index.isdigit() else None


def owner_topic(topic: str) -> str:
    """The topic whose rights cover ``topic``: the part before ``/_chunk/`` (whatever follows it, a chunk
    index or not), else ``topic`` itself."""
    head, sep, _ = topic.rpartition(SUFFIX)
    return head if sep else topic


def split(payload: bytes, max_payload: int) -> List[bytes]:
    """Chunk frames for ``payload`` such that each is at most ``max_payload`` bytes."""
    if max_payload < HEADER_LEN + MIN_CHUNK_PAYLOAD:
        raise ValueError(f"a chunk needs at least {HEADER_LEN + MIN_CHUNK_PAYLOAD} bytes, not {max_payload}")
    step = max_payload - HEADER_LEN
    count = max(1, math.ceil(len(payload) / step))
    digest = hashlib.sha256(payload).digest()
    view = memoryview(payload)
    return [HEADER.pack(MAGIC, VERSION, b"\0\0\0", digest, i, count, len(payload)) + view[i * step:(i + 1) * step]
            for i in range(count)]


MAX_PENDING_SETS = 4096
MAX_SETS_PER_TOPIC = 4


@dataclass
class _Pending:
    count: int
    total: int
    started: float
    parts: Dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects chunks into whole messages, with bounded memory and a timeout for missing chunks."""

    def __init__(self, max_message_bytes: int, timeout_s: float = 60.0, max_pending_bytes: Optional[int] = None,
                 max_pending_sets: int = MAX_PENDING_SETS, max_sets_per_topic: int = MAX_SETS_PER_TOPIC) -> None:
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self.max_pending_bytes = max_pending_bytes or 4 * max_message_bytes
        self.max_pending_sets = max_pending_sets  # sets open at once, in all (headers without data cost too)
        self.max_sets_per_topic = max_sets_per_topic  # ... and per message topic (one sender's)
        self.pending: "OrderedDict[Tuple[str, bytes], _Pending]" = OrderedDict()
        self.pending_bytes = 0
        self.sets_of: Dict[str, List[Tuple[str, bytes]]] = {}  # message topic -> its open sets, oldest first
        self.completed: "OrderedDict[Tuple[str, bytes], None]" = OrderedDict()  # recent, to ignore late duplicates

    def add(self, topic: str, chunk: bytes, now: Optional[float] = None) -> Optional[Tuple[str, bytes]]:
        """Take one chunk received on a chunk topic; return (message topic, message) when one is complete."""
        base, digest, index, count, total = self._header(topic, chunk)
        now = time.monotonic() if now is None else now
        key = (base, digest)
        if key in self.completed:
            return None  # a QoS 1 redelivery of a message already delivered
        p = self.pending.get(key)
        if p is None:
            self._make_room(base)
            p = _Pending(count=count, total=total, started=now)
            self._open(key, p)
        elif (p.count, p.total) != (count, total):
            raise ChunkError(
                f"chunk {index} says {count} chunks / {total} bytes, earlier ones said {p.count} / {p.total}"
            )
        data = chunk[HEADER_LEN:]
        if index in p.parts:
            return None  # a QoS 1 redelivery
        if p.size + len(data) > p.total:
            self._drop(key)
            raise ChunkError(f"chunks for {base} add up to more than the announced {p.total} bytes")
        p.parts[index] = data
        p.size += len(data)
        self.pending_bytes += len(data)
        self._evict_over_budget(key)
        if len(p.parts) < p.count:
            return None
        self._drop(key)
        whole = b"".join(p.parts[i] for i in range(p.count))
        if len(whole) != p.total or hashlib.sha256(whole).digest() != digest:
            raise ChunkError(f"reassembled message for {base} fails its SHA-256 check")
        self.completed[key] = None
        while len(self.completed) > 1024:
            self.completed.popitem(last=False)
        return base, whole

    def _header(self, topic: str, chunk: bytes) -> Tuple[str, bytes, int, int, int]:
        """(message topic, digest, index, count, total bytes) of a chunk whose header and topic agree."""
        base = base_topic(topic)
        if base is None:
            raise ChunkError(f"{topic} is not a chunk topic (…{SUFFIX}<index>)")
        if len(chunk) < HEADER_LEN:
            raise ChunkError(f"chunk of {len(chunk)} bytes is shorter than its {HEADER_LEN}-byte header")
        magic, version, reserved, digest, index, count, total = HEADER.unpack_from(chunk, 0)
        if magic != MAGIC or version != VERSION or reserved != b"\0\0\0":
            raise ChunkError(f"not a version {VERSION} chunk")
        if total > self.max_message_bytes:
            raise ChunkError(f"chunked message of {total} bytes is over the limit of {self.max_message_bytes}")
        if not (0 < count <= max(1, total) and index < count) or int(topic[len(base) + len(SUFFIX):]) != index:
            raise ChunkError(f"chunk {index} of {count} for {total} bytes is inconsistent with its topic")
        return base, digest, index, count, total

    def opens_set(self, topic: str, chunk: bytes) -> bool:
        """True if this chunk would open a new set (the first chunk seen of a message): what a rate limit
        counts, one per message however many chunks it has."""
        base = base_topic(topic)
        if base is None or len(chunk) < HEADER_LEN:
            return False
        key = (base, HEADER.unpack_from(chunk, 0)[3])
        return key not in self.pending and key not in self.completed

    def _make_room(self, base: str) -> None:
        """Before a new set opens: drop the oldest set of the same topic beyond its share, and the oldest set
        of all beyond the total, so that neither one sender nor all of them can grow memory without bound."""
        mine = self.sets_of.get(base, [])
        while len(mine) >= self.max_sets_per_topic:
            self._drop(mine[0])
        while len(self.pending) >= self.max_pending_sets:
            self._drop(next(iter(self.pending)))

    def _open(self, key: Tuple[str, bytes], p: _Pending) -> None:
        self.pending[key] = p
        self.sets_of.setdefault(key[0], []).append(key)

    def _drop(self, key: Tuple[str, bytes]) -> _Pending:
        """Forget a pending set (completed, expired or evicted)."""
        p = self.pending.pop(key)
        self.pending_bytes -= p.size
        mine = self.sets_of[key[0]]
        mine.remove(key)
        if not mine:
            del self.sets_of[key[0]]
        return p

    def _evict_over_budget(self, keep: Tuple[str, bytes]) -> None:
        while self.pending_bytes > self.max_pending_bytes and len(self.pending) > 1:
            key, p = next(iter(self.pending.items()))
            if key == keep:
                self.pending.move_to_end(key)
                continue
            self._drop(key)

    def expire(self, now: Optional[float] = None) -> List[Tuple[str, int, int]]:
        """Drop sets older than the timeout; returns (topic, chunks received, chunks expected) of each."""
        now = time.monotonic() if now is None else now
        dropped = []
        for key, p in list(self.pending.items()):
            if now - p.started > self.timeout_s:
                self._drop(key)
                dropped.append((key[0], len(p.parts), p.count))
        return dropped
