"""Entry-point groups: how installed distributions add commands, data sources and export formats."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import List


def plugins(group: str) -> List[EntryPoint]:
    """The entry points of ``group`` in every installed distribution (Python 3.9's API and later ones)."""
    eps = entry_points()
    return list(eps.select(group=group) if hasattr(eps, "select") else eps.get(group, []))
