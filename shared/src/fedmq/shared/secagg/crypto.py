"""Key agreement (X25519 + HKDF-SHA256), mask expansion (ChaCha20 keystream) and share encryption
(ChaCha20-Poly1305) for secure aggregation. Needs the ``cryptography`` package (node extra ``secure``)."""

from __future__ import annotations

import base64
import os
from typing import Any, Tuple

import numpy as np

from fedmq.shared.secagg.field import P

KEY_BYTES = 32
NONCE_BYTES = 12


def new_keypair() -> Tuple[object, bytes]:
    """An X25519 private key and its raw public bytes."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    sk = X25519PrivateKey.generate()
    return sk, public_bytes(sk)


def private_bytes(sk: Any) -> bytes:
    """Raw bytes of an X25519 private key (what is secret-shared)."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_bytes(sk: Any) -> bytes:
    """Raw public bytes of an X25519 private key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_key(raw: bytes) -> Any:
    """An X25519 private key from its raw bytes."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(raw)


def agree(sk: Any, peer_public: bytes, context: bytes) -> bytes:
    """A 32-byte key both sides derive: HKDF-SHA256 of the X25519 shared secret, bound to ``context``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"fedmq-secagg/1 " + context).derive(
        shared
    )


def expand(seed: bytes, size: int) -> np.ndarray:
    """``size`` field elements from a 32-byte seed: the ChaCha20 keystream, 8 bytes per element, mod P."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor().update(bytes(8 * size))
    return (np.frombuffer(stream, dtype="<u8") % np.uint64(P)).astype(np.int64)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Nonce + ChaCha20-Poly1305 ciphertext."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of ``seal``; ValueError if it was not sealed with this key and ``aad``."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise ValueError("share ciphertext does not open with the agreed key") from None


def b64(data: bytes) -> str:
    """Base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, length: int = 0, limit: int = 4096) -> bytes:
    """Bytes from base64 text (exactly ``length`` bytes if given); ValueError otherwise."""
    if not isinstance(text, str) or len(text) > limit:
        raise ValueError("expected base64 text")
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError("not base64") from None
    if length and len(data) != length:
        raise ValueError(f"expected {length} bytes")
    return data
