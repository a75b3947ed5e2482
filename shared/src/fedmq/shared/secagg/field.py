"""The field masks live in: integers modulo the Mersenne prime 2^61 - 1, one per model entry (int64 on
the wire), and the fixed-point encoding of weighted updates into it."""

from __future__ import annotations

import numpy as np

P = (1 << 61) - 1
HALF = P // 2


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` mod P for field vectors (int64 in [0, P))."""
    return (a + b) % P  # both below 2^61: the sum fits in int64


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` mod P."""
    return (a - b) % P  # numpy's % is non-negative for a positive modulus


def encode(values: np.ndarray, frac_bits: int, rng: np.random.Generator) -> np.ndarray:
    """Fixed point with ``frac_bits`` fraction bits, stochastically rounded (unbiased), into the field.
    Raises ValueError if a value is too large for a sum of many of them to stay unambiguous."""
    scaled = np.asarray(values, np.float64) * float(1 << frac_bits)
    limit = float(1 << 52)  # far below P / 2 ~ 2^60: room for sums of up to 256 such values
    if not np.isfinite(scaled).all() or np.abs(scaled).max(initial=0.0) >= limit:
        raise ValueError(f"values too large for the field at {frac_bits} fraction bits")
    q = np.floor(scaled + rng.random(scaled.shape)).astype(np.int64)
    return q % P


def decode(sums: np.ndarray, frac_bits: int) -> np.ndarray:
    """Field elements back to floats: above P/2 are negative."""
    s = np.asarray(sums, np.int64)
    signed = np.where(s > HALF, s - P, s)
    return signed.astype(np.float64) / float(1 << frac_bits)


def is_vector(a: np.ndarray, size: int) -> bool:
    """True if ``a`` is a flat int64 vector of ``size`` field elements."""
    return a.dtype == np.int64 and a.shape == (size,) and bool(((a >= 0) & (a < P)).all())
