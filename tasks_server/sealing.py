"""Secrets at rest: AES-256-GCM for task data and a keyed digest for owner keys.

The encryption key is derived from ``CIPHER_KEY``; changing it makes stored task data
unreadable (as in the original). Each value gets a fresh random 96-bit nonce (the original
reused one nonce per task: docs/compatibility.md#storage).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


class Sealer:
    """Encrypts and decrypts byte strings; ``open`` raises ValueError on tampering."""

    def __init__(self, cipher_key: str) -> None:
        key = hashlib.sha256(b"tasks-server/seal/v1\x00" + cipher_key.encode()).digest()
        self._aead = AESGCM(key)

    def seal(self, plain: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, None)

    def seal_many(self, plains: Sequence[bytes | None]) -> list[bytes | None]:
        """``seal`` of each value (None stays None), the nonces read from the random
        source at once: os.urandom lets go of the GIL, and taking it back from a busy
        thread costs up to a switch interval, once per call."""
        nonces = os.urandom(_NONCE_BYTES * len(plains))
        encrypt = self._aead.encrypt
        sealed: list[bytes | None] = []
        for index, plain in enumerate(plains):
            if plain is None:
                sealed.append(None)
                continue
            nonce = nonces[index * _NONCE_BYTES : (index + 1) * _NONCE_BYTES]
            sealed.append(nonce + encrypt(nonce, plain, None))
        return sealed

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None)
        except Exception as exc:  # InvalidTag carries no message of its own
            raise ValueError("stored data cannot be decrypted with this CIPHER_KEY") from exc


def key_digest(key: str) -> bytes:
    """Digest of an owner key as stored. The key has ~380 bits of entropy, so a fast keyed
    hash is enough: a slow password hash (the original's Argon2id per request) buys nothing.
    """
    return hmac.new(b"tasks-server/owner-key/v1", key.encode(), hashlib.sha256).digest()


def keys_match(stored_digest: bytes, key: str) -> bool:
    return hmac.compare_digest(stored_digest, key_digest(key))
