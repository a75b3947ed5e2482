"""Norm clipping of an update's change, where the update arrives (root or edge group)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from fedmq.shared.codecs import Decoded, Sparse


def clip_update(tensors: Mapping[str, Decoded], reference: Optional[Mapping[str, np.ndarray]], bound: float,
                norm: float) -> Dict[str, Decoded]:
    """The update with its change scaled down to L2 norm ``bound`` if ``norm`` (the change's norm, which the
    caller has from ``codecs.norm``) is larger; otherwise the update as it is.

    ``reference`` is None when the tensors already are a change (``compression.delta``); otherwise the
    change is ``tensors - reference`` and the clipped update is ``reference + scaled change``."""
    if norm <= bound:
        return dict(tensors)
    scale = bound / norm
    out: Dict[str, Decoded] = {}
    for k, t in tensors.items():
        if isinstance(t, Sparse):
            out[k] = Sparse(t.idx, t.val * scale, t.shape)
        elif reference is None:
            out[k] = np.asarray(t, np.float64) * scale
        else:
            out[k] = reference[k] + (np.asarray(t, np.float64) - reference[k]) * scale
    return out
