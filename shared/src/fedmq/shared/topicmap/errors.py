"""Configuration errors that name the file, the line, the key path and a fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file."""

    file: str
    line: Optional[int]
    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        fix = f"\n    fix: {self.fix}" if self.fix else ""
        return f"{where}:{key} {self.message}{fix}"


class TopicMapError(Exception):
    """Raised with every issue found in a configuration file."""

    def __init__(self, issues: List[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))
