"""Shamir secret sharing of 32-byte secrets over the prime field of 2^521 - 1: any ``threshold`` shares
give the secret back, fewer reveal nothing about it."""

from __future__ import annotations

import secrets
from typing import Dict, List

Q = (1 << 521) - 1
SHARE_BYTES = 66


def split(secret: bytes, count: int, threshold: int) -> List[int]:
    """Shares at x = 1 .. ``count`` of ``secret`` (at most 64 bytes) for a ``threshold``-of-``count`` scheme."""
    if not 1 <= threshold <= count:
        raise ValueError("need 1 <= threshold <= count")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(Q) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, count + 1):
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % Q
        shares.append(y)
    return shares


def combine(shares: Dict[int, int], length: int = 32) -> bytes:
    """The secret from ``threshold`` or more shares {x: y} (Lagrange interpolation at 0)."""
    if not shares or any(not 0 < x < Q or not 0 <= y < Q for x, y in shares.items()):
        raise ValueError("shares must be points with 0 < x and 0 <= y < Q")
    secret = 0
    for xi, yi in shares.items():
        num = den = 1
        for xj in shares:
            if xj != xi:
                num = num * -xj % Q
                den = den * (xi - xj) % Q
        secret = (secret + yi * num * pow(den, -1, Q)) % Q
    if secret >= 1 << (8 * length):
        raise ValueError("shares do not combine to a secret of this length (too few, or inconsistent)")
    return secret.to_bytes(length, "big")


def to_text(y: int) -> str:
    """A share as hex, for JSON."""
    return format(y, "x")


def from_text(text: object) -> int:
    """A share from hex (ValueError if it is not one)."""
    if not isinstance(text, str) or not 0 < len(text) <= 2 * SHARE_BYTES:
        raise ValueError("a share must be a hex string")
    y = int(text, 16)
    if y >= Q:
        raise ValueError("share out of range")
    return y
