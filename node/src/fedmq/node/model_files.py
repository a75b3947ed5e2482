"""Model files (.tflite) announced by content hash: cached on disk, fetched from their retained topic
only when the hash changes, and refused when the bytes do not match the announced hash."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Optional

from fedmq.shared.files import write_atomic

SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelFileError(ValueError):
    """An announced or received model file that cannot be used."""


def check_announcement(meta: object, max_bytes: int) -> Optional[str]:
    """The SHA-256 a model envelope's ``meta.file`` announces, or None when it announces none."""
    if meta is None:
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not SHA256.match(meta["sha256"]):
        raise ModelFileError("meta.file must carry a lowercase hex sha256")
    size = meta.get("bytes")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= max_bytes:
        raise ModelFileError(f"announced model file size {size!r} is not within 1..{max_bytes} bytes")
    if meta.get("format") != "tflite":
        raise ModelFileError(f"unknown model file format {meta.get('format')!r}")
    return meta["sha256"]


class ModelFileCache:
    """Files by hash in one directory, written atomically."""

    def __init__(self, directory: str, log: Optional[logging.Logger] = None) -> None:
        self.directory = directory
        self.log = log or logging.getLogger("fedmq.node.cache")

    def path(self, sha256: str) -> str:
        """Where a file with this hash lives."""
        return os.path.join(self.directory, f"{sha256}.tflite")

    def get(self, sha256: str) -> Optional[bytes]:
        """The cached bytes, if present and still matching their hash."""
        try:
            with open(self.path(sha256), "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def accept(self, sha256: str, data: bytes) -> bytes:
        """Verify received bytes against the announced hash and cache them; ModelFileError on a mismatch."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ModelFileError(f"model file refused: announced sha256 {sha256[:16]}..., received bytes hash to "
                                 f"{actual[:16]}... (corrupted or forged); waiting for the right file")
        try:
            os.makedirs(self.directory, exist_ok=True)
            write_atomic(self.path(sha256), data)
        except OSError as exc:  # a full disk costs the cache, never the round: the file is in memory
            self.log.warning("cannot cache the model file in %s (%s); using it from memory, it is fetched again "
                             "after a restart", self.directory, exc.strerror or exc)
        return data
