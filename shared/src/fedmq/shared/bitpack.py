"""Bit-level encodings for sparse updates (docs/protocol.md, section 4.4): Elias–Fano coded indices and
4-bit signed values. Every bit stream is packed most significant bit first (numpy's ``packbits`` order) and
padded with zero bits to a whole byte; decoders refuse anything that is not exactly what the encoder makes.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

INT4_MAX = 7


class BitpackError(ValueError):
    """Bytes that are not a valid encoding."""


def low_bits(universe: int, count: int) -> int:
    """Elias–Fano's low-part width: floor(log2(universe / count)), at least 0."""
    if count <= 0 or universe < count:
        raise BitpackError(f"{count} indices cannot lie in [0, {universe})")
    return max(0, (universe // count).bit_length() - 1)


def ef_encode(idx: np.ndarray, universe: int) -> Tuple[np.ndarray, np.ndarray]:
    """(high, low) uint8 streams of strictly increasing indices in [0, universe), at least one.

    With ``l = low_bits(universe, n)``: the low stream is every index's ``l`` low bits, one after the other;
    the high stream has, for the i-th index (from 0), a 1 bit at position ``(index >> l) + i`` and 0 bits
    elsewhere, and ends with the byte that holds its last 1 bit.
    """
    idx = np.asarray(idx, np.int64)
    n = idx.size
    ell = low_bits(universe, n)
    positions = (idx >> ell) + np.arange(n)
    bits = np.zeros(int(positions[-1]) + 1, np.uint8)
    bits[positions] = 1
    shifts = np.arange(ell - 1, -1, -1, dtype=np.int64)
    low = ((idx[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bits), np.packbits(low)


def ef_decode(high: np.ndarray, low: np.ndarray, universe: int) -> np.ndarray:
    """Indices (int64) from the streams ``ef_encode`` makes, checking the streams' lengths and padding. Their
    order and range are the caller's to check, as for every index encoding (``codecs._decode_topk``)."""
    if high.dtype != np.uint8 or low.dtype != np.uint8 or high.ndim != 1 or low.ndim != 1:
        raise BitpackError("Elias–Fano streams must be flat uint8")
    if not high.size or high[-1] == 0 or high.size > (2 * universe + 7) // 8:
        raise BitpackError(f"the high stream must end with a 1 bit and hold at most {2 * universe} bits")
    positions = np.flatnonzero(np.unpackbits(high))
    n = positions.size
    if n > universe:
        raise BitpackError(f"{n} indices in a model of {universe} entries")
    ell = low_bits(universe, n)
    if low.size != (n * ell + 7) // 8:
        raise BitpackError(f"the low stream must be {(n * ell + 7) // 8} bytes for {n} indices of {ell} low bits")
    bits = np.unpackbits(low)
    if bits[n * ell:].any():
        raise BitpackError("the low stream's padding bits must be 0")
    weights = np.left_shift(1, np.arange(ell - 1, -1, -1, dtype=np.int64))
    lows = bits[:n * ell].reshape(n, ell).astype(np.int64) @ weights if ell else np.zeros(n, np.int64)
    return ((positions - np.arange(n)) << ell) | lows


def int4_pack(q: np.ndarray) -> np.ndarray:
    """Signed codes in [-7, 7], two per byte (the first in the high nibble, two's complement), 0-padded."""
    nib = (np.asarray(q, np.int64) & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] << 4) | nib[1::2]


def int4_unpack(packed: np.ndarray, count: int) -> np.ndarray:
    """``count`` codes (int8) from ``int4_pack``'s bytes; refuses the code -8 and non-zero padding."""
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (count + 1) // 2:
        raise BitpackError(f"int4 values must be {(count + 1) // 2} uint8 bytes for {count} values")
    nib = np.empty(packed.size * 2, np.int8)
    nib[0::2], nib[1::2] = packed >> 4, packed & 0xF
    if (nib == 8).any() or nib[count:].any():
        raise BitpackError("int4 values must be in [-7, 7] with a zero padding nibble")
    nib[nib > 7] -= 16
    return nib[:count]
