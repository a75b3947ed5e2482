"""Norm clipping of an update's change, where the update arrives (root or edge group)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from fedmq.shared.codecs import Decoded, Sparse, norm


def clip_update(tensors: Mapping[str, Decoded], reference: Optional[Mapping[str, np.ndarray]], bound: float
                ) -> Tuple[Dict[str, Decoded], float]:
    """(the update with its change scaled down to norm ``bound`` if it was larger, the change's norm before).

    ``reference`` is None when the tensors already are a change (``compression.delta``); otherwise the
    change is ``tensors - reference`` and the clipped update is ``reference + scaled change``."""
    before = norm(tensors, reference)
    if before <= bound or before == 0.0:
        return dict(tensors), before
    scale = bound / before
    out: Dict[str, Decoded] = {}
    for k, t in tensors.items():
        if isinstance(t, Sparse):
            out[k] = Sparse(t.idx, t.val * scale, t.shape)
        elif reference is None:
            out[k] = np.asarray(t, np.float64) * scale
        else:
            out[k] = reference[k] + (np.asarray(t, np.float64) - reference[k]) * scale
    return out, before
