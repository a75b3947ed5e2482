"""Set the release version everywhere it is written: the four distributions' pyproject.toml (their own
version and their pins on each other) and fedmq.shared.__version__. Add the CHANGELOG.md entry by hand.

Usage: python deploy/tools/set_version.py 0.2.0
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ("shared", "broker", "node", "coordinator")
VERSION_FILE = ROOT / "shared" / "src" / "fedmq" / "shared" / "__init__.py"


def places() -> List[Path]:
    """Every file that states the version."""
    return [ROOT / d / "pyproject.toml" for d in DISTRIBUTIONS] + [VERSION_FILE]


def set_version(version: str) -> None:
    """Rewrite the version in every place."""
    for path in places():
        text = path.read_text(encoding="utf-8")
        text = re.sub(r'(?m)^(version|__version__) = "[^"]+"', rf'\1 = "{version}"', text)
        text = re.sub(r'"(fedmq-(?:shared|broker|node|coordinator))==[^"]+"', rf'"\1=={version}"', text)
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not re.fullmatch(r"\d+\.\d+\.\d+", sys.argv[1]):
        sys.exit(__doc__)
    set_version(sys.argv[1])
