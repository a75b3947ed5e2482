"""Mosquitto password files (mosquitto_passwd format: PBKDF2-HMAC-SHA512, ``$7$iterations$salt$hash``)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from typing import Dict

from fedmq.shared.files import write_atomic

ITERATIONS = 101  # what mosquitto_passwd 2.0 writes


def hash_password(password: str, salt: bytes = b"") -> str:
    """The hash field of one line."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, ITERATIONS, 64)
    return f"$7${ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def new_password() -> str:
    """A random password for a device."""
    return secrets.token_urlsafe(24)


def read_file(path: str) -> Dict[str, str]:
    """user -> hash from a password file (empty when it does not exist)."""
    out: Dict[str, str] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if ":" in line:
                    user, hashed = line.rstrip("\n").split(":", 1)
                    out[user] = hashed
    return out


def write_file(path: str, entries: Dict[str, str]) -> None:
    """Write user:hash lines, readable only by the owner."""
    write_atomic(path, "".join(f"{user}:{entries[user]}\n" for user in sorted(entries)), mode=0o600)
