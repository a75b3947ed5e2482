"""Optional dependencies installed through a distribution's extras (``fedmq-coordinator[dp]``): import
one with an error that names the extra to install when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(RuntimeError):
    """A feature needs a package that an extra of a fedmq distribution installs."""


def require(module: str, distribution: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` naming ``pip install 'distribution[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{feature} needs the Python package {module.split('.')[0]!r}, which is not installed "
                           f"here ({exc}): pip install '{distribution}[{extra}]'") from None
