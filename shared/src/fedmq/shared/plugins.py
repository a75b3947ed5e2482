"""Entry-point groups: how installed distributions add commands, data sources and export formats."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points
from typing import List


def plugins(group: str) -> List[EntryPoint]:
    """The entry points of ``group`` in every installed distribution (Python 3.9's API and later ones)."""
    if sys.version_info >= (3, 10):
        return list(entry_points(group=group))
    return list(entry_points().get(group, []))
