"""End-to-end integrity: Ed25519 signatures on envelopes, so a compromised broker or bridge cannot forge
or alter an update, a partial aggregate or a model unnoticed.

A signed message is the envelope followed by an 84-byte trailer::

    b"FSIG" | nonce (16 random bytes) | Ed25519 signature (64 bytes)

The signature covers ``b"fedmq-sig-v1\\0" | federation | \\0 | round (decimal) | \\0 | signer id | \\0 |
kind (1 byte) | SHA-256(envelope) | nonce``: the signer's identity, the federation, the round and the
payload are all bound. Receivers keep the nonces they have seen (bounded) to refuse replays.
Needs the ``cryptography`` package (``pip install 'fedmq-node[secure]'`` on nodes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from fedmq.shared.envelope import Envelope, EnvelopeRefused, Kind, Rejected, decode, encode

MAGIC = b"FSIG"
NONCE_LEN = 16
SIG_LEN = 64
TRAILER_LEN = len(MAGIC) + NONCE_LEN + SIG_LEN


class SignatureError(Rejected):
    """A message whose signature is missing, invalid, from an unknown signer, or replayed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason, reason)


def _message(federation: str, round_: int, signer: str, kind: int, envelope: bytes, nonce: bytes) -> bytes:
    return b"\0".join([b"fedmq-sig-v1", federation.encode(), str(round_).encode(), signer.encode()]) + b"\0" + \
        bytes([kind]) + hashlib.sha256(envelope).digest() + nonce


def load_signing_key(path: str) -> Any:
    """An Ed25519 private key from a PEM file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with open(path, "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def new_signing_key(path: str) -> str:
    """Create an Ed25519 key at ``path`` (mode 600); returns its public key as base64."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return public_b64(key)


def public_b64(key: Any) -> str:
    """The raw 32-byte public key of a private key, base64."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign(key: Any, envelope: bytes, *, federation: str, round_: int, signer: str, kind: int) -> bytes:
    """``envelope`` with a signature trailer."""
    nonce = os.urandom(NONCE_LEN)
    sig = key.sign(_message(federation, round_, signer, kind, envelope, nonce))
    return envelope + MAGIC + nonce + sig


def split(payload: bytes) -> Tuple[bytes, Optional[bytes], Optional[bytes]]:
    """(envelope, nonce, signature); nonce and signature are None when there is no trailer."""
    if len(payload) > TRAILER_LEN and payload[-TRAILER_LEN:-TRAILER_LEN + len(MAGIC)] == MAGIC:
        t = payload[-TRAILER_LEN:]
        return payload[:-TRAILER_LEN], t[len(MAGIC):len(MAGIC) + NONCE_LEN], t[len(MAGIC) + NONCE_LEN:]
    return payload, None, None


def reload_keys(auth: "Auth", log: "logging.Logger") -> List[str]:
    """``auth.reload()``, logging what changed: a revoked party's messages are refused from now on. Returns
    the parties dropped."""
    try:
        dropped = auth.reload()
    except SignatureError as exc:
        log.error("%s", exc)
        return []
    if dropped:
        log.warning("keys reloaded from %s: no longer accepting messages signed by %s", auth.keys_path,
                    ", ".join(dropped))
    return dropped


class KeyRing:
    """Public keys by signer id, and the nonces already seen (at most ``max_nonces``, oldest forgotten)."""

    def __init__(self, public_keys: Dict[str, str], max_nonces: int = 100_000) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self.keys = {k: Ed25519PublicKey.from_public_bytes(base64.b64decode(v)) for k, v in public_keys.items()}
        self.seen: "OrderedDict[bytes, None]" = OrderedDict()
        self.max_nonces = max_nonces

    @classmethod
    def from_file(cls, path: str) -> "KeyRing":
        """Read a keys.json written by ``fedmq broker provision``."""
        with open(path, encoding="utf-8") as fh:
            return cls(json.load(fh))

    def verify(self, payload: bytes, *, federation: str, round_: int, signer: str, kind: int,
               envelope: Optional[bytes] = None, fresh: bool = True) -> bytes:
        """The envelope bytes of a correctly signed message; SignatureError otherwise. With ``fresh``, a
        nonce seen before is a replay (retained models are checked by version instead)."""
        from cryptography.exceptions import InvalidSignature

        env, nonce, sig = split(payload) if envelope is None else (envelope, *split(payload)[1:])
        if nonce is None or sig is None:
            raise SignatureError("missing signature", f"nothing signed by {signer!r}")
        key = self.keys.get(signer)
        if key is None:
            raise SignatureError("unknown signer", f"no public key for {signer!r}")
        try:
            key.verify(sig, _message(federation, round_, signer, kind, env, nonce))
        except InvalidSignature:
            raise SignatureError("bad signature", f"not signed by {signer!r} for round {round_}") from None
        if fresh:
            self.remember(payload, signer)
        return env

    def remember(self, payload: bytes, signer: str) -> None:
        """Record the nonce of a message whose signature was verified; SignatureError if it was seen before
        (a replay). A receiver that holds a message for later verifies it at once and remembers it when it
        counts it, so the held message is not taken for its own replay."""
        nonce = split(payload)[1]
        if nonce is None:
            raise SignatureError("missing signature", f"nothing signed by {signer!r}")
        if nonce in self.seen:
            raise SignatureError("replayed nonce", f"a message from {signer!r} seen before")
        self.seen[nonce] = None
        while len(self.seen) > self.max_nonces:
            self.seen.popitem(last=False)


def _stamp(path: str) -> Tuple[int, int]:
    """(modification time in ns, size) of a file, or (0, 0) when it cannot be stat'ed."""
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, 0


class Auth:
    """One party's signing identity plus everyone's public keys: seals what it sends, checks what it gets."""

    RELOAD_S = 2.0  # how often ``reload`` looks at keys.json

    def __init__(self, identity: str, signing_key: str, keys: str) -> None:
        self.identity = identity
        self.key = load_signing_key(signing_key)
        self.keys_path = keys
        self.keyring = KeyRing.from_file(keys)
        self._stamp = _stamp(keys)
        self._looked = time.monotonic()

    def reload(self, force: bool = False) -> List[str]:
        """Read keys.json again if it changed (looking at most every ``RELOAD_S`` unless ``force``): a party
        revoked while this process runs is refused from then on, one enrolled is trusted. Returns the signers
        that were dropped; a file that cannot be read keeps the keys in use and raises SignatureError."""
        if not force and time.monotonic() - self._looked < self.RELOAD_S:
            return []
        self._looked = time.monotonic()
        stamp = _stamp(self.keys_path)
        if stamp == self._stamp:
            return []
        try:
            fresh = KeyRing.from_file(self.keys_path)
        except (OSError, ValueError, TypeError) as exc:
            raise SignatureError("unreadable keys",
                                 f"{self.keys_path}: {exc}; still using the keys read before") from None
        self._stamp = stamp
        dropped = sorted(set(self.keyring.keys) - set(fresh.keys))
        self.keyring.keys = fresh.keys  # the nonces seen stay
        return dropped

    def seal(self, env: "Envelope") -> bytes:
        """Encode and sign an envelope as this party."""
        return sign(
            self.key, encode(env), federation=env.federation, round_=env.round, signer=self.identity, kind=int(env.kind)
        )

    def check(self, payload: bytes, envelope: bytes, env: "Envelope", signer: str, *, fresh: bool = True) -> None:
        """Verify that ``signer`` signed this envelope (raises SignatureError)."""
        self.keyring.verify(
            payload,
            federation=env.federation,
            round_=env.round,
            signer=signer,
            kind=int(env.kind),
            envelope=envelope,
            fresh=fresh,
        )

    def check_any(
        self, payload: bytes, envelope: bytes, env: "Envelope", signers: Tuple[str, ...], *, fresh: bool = True
    ) -> None:
        """Verify that one of ``signers`` signed this envelope (raises the last signer's SignatureError)."""
        error = SignatureError("unknown signer", "no signer allowed")
        for signer in signers:
            try:
                self.check(payload, envelope, env, signer, fresh=fresh)
                return
            except SignatureError as exc:
                error = exc
        raise error


def seal(env: Envelope, auth: Optional[Auth]) -> bytes:
    """The bytes to publish for ``env``: signed by ``auth``'s identity where the federation signs, else plain."""
    return auth.seal(env) if auth is not None else encode(env)


Signers = Union[Sequence[str], Callable[[Envelope], Sequence[str]]]


def open_envelope(
    payload: bytes,
    *,
    federation: str,
    kind: Kind,
    max_bytes: int,
    auth: Optional[Auth],
    signers: Signers,
    sender: Optional[str] = None,
    fresh: bool = True,
) -> Envelope:
    """The one way a received envelope is opened: decoded within ``max_bytes``, of ``kind`` and this
    ``federation``, from ``sender`` where the topic names one, and, where the federation signs, signed by one of
    ``signers`` (or of those ``signers(env)`` names); ``fresh`` refuses a replayed nonce (retained models are
    checked by version instead). Raises a ``Rejected`` (EnvelopeError, EnvelopeRefused, SignatureError) whose
    ``reason`` names the problem."""
    raw = split(payload)[0] if auth is not None else payload
    env = decode(raw, max_bytes=max_bytes)
    if env.kind != kind:
        raise EnvelopeRefused(f"{env.kind.name} on an {kind.name} topic", "wrong kind")
    if env.federation != federation:
        raise EnvelopeRefused(f"federation {env.federation!r}, not {federation!r}", "wrong federation")
    if sender is not None and env.sender != sender:
        raise EnvelopeRefused(f"header says {env.sender!r}, topic says {sender!r}", "sender mismatch")
    if auth is not None:
        auth.check_any(payload, raw, env, tuple(signers(env) if callable(signers) else signers), fresh=fresh)
    return env
