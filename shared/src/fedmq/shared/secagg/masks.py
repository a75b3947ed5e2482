"""Masking and unmasking (Bonawitz et al. 2017, section 4): node ``u`` sends
``y_u = x_u + PRG(b_u) + sum_{v != u} sign(u, v) PRG(s_uv)`` with ``sign = +1`` if ``u < v`` else ``-1``
(node ids compared as strings) and ``s_uv`` agreed from ``u``'s and ``v``'s mask keys. Pairwise masks
cancel in the sum over nodes that all sent; the aggregator removes the self masks of those that sent and
the pairwise masks towards those that dropped out, from seeds and keys rebuilt from shares."""

from __future__ import annotations

from typing import Dict, Iterable, Mapping

import numpy as np

from fedmq.shared.secagg import crypto, field


def context(federation: str, group: str, round_: int, attempt: int, model_version: int) -> bytes:
    """What every derived key is bound to: one group's one session (round, attempt, model version)."""
    return f"{federation}|{group}|{round_}|{attempt}|{model_version}".encode()


def pairwise(own: str, s_sk: object, peers: Mapping[str, bytes], ctx: bytes, size: int) -> np.ndarray:
    """``sum_v sign(own, v) PRG(s_{own,v})`` over ``peers`` (id -> mask public key)."""
    total = np.zeros(size, np.int64)
    for peer, pk in peers.items():
        if peer == own:
            continue
        mask = crypto.expand(crypto.agree(s_sk, pk, ctx), size)
        total = field.add(total, mask) if own < peer else field.sub(total, mask)
    return total


def mask(x: np.ndarray, own: str, b_seed: bytes, s_sk: object, peers: Mapping[str, bytes], ctx: bytes) -> np.ndarray:
    """A node's masked input ``y_u``."""
    return field.add(field.add(x, crypto.expand(b_seed, x.size)), pairwise(own, s_sk, peers, ctx, x.size))


def unmask(total: np.ndarray, b_seeds: Mapping[str, bytes], dropped: Mapping[str, object],
           survivors: Iterable[str], public: Mapping[str, bytes], ctx: bytes) -> np.ndarray:
    """``sum_{u in survivors} x_u`` from the sum of their masked inputs, their self-mask seeds and the mask
    keys of the nodes that dropped out after the keys were shared (``public``: id -> mask public key)."""
    out = total
    for seed in b_seeds.values():
        out = field.sub(out, crypto.expand(seed, total.size))
    alive: Dict[str, bytes] = {u: public[u] for u in survivors}
    for v, sk in dropped.items():
        # each survivor u added sign(u, v) PRG(s_uv); the dropped v's own view is sign(v, u) = -sign(u, v)
        out = field.add(out, pairwise(v, sk, alive, ctx, total.size))
    return out
