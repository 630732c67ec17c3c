"""Encryption at rest for what the fleet keeps in Redis that must stay secret: ACME account
keys and certificate private keys (AES-256-GCM, :mod:`cryptography`).

The operator's secret (``acme.shared_key_file`` or the environment variable named by
``acme.shared_key_env``) is any run of at least 32 printable characters, such as the output of
``openssl rand -base64 32``; the AES key is derived from it with HKDF-SHA256, so its format
does not matter and a secret shared with another tool gives a different key. Each value is
sealed with a fresh 96-bit random nonce and with its Redis key name as associated data: a
value copied to another key (one name's certificate passed off as another's) does not open.

What this does not stop, and docs/fleet.md says so: someone who can write to Redis can delete
values or put back an older sealed value of the same key (a rollback to an older certificate).
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_SECRET_LENGTH: Final = 32
_VERSION: Final = b"o1"
_NONCE: Final = 12
_INFO: Final = b"offload fleet acme store v1"


class SealError(ValueError):
    """A sealed value that does not open: another secret, another key name, or tampering."""


def check_secret(secret: bytes) -> str | None:
    """Why ``secret`` is unfit (in words for a config error), or None."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"it holds {len(secret)} characters; at least {MIN_SECRET_LENGTH} are needed"
    if any(c <= 32 or c > 126 for c in secret):
        return "it must be one line of printable characters without spaces"
    return None


class Sealer:
    """Seals and opens values under one secret."""

    __slots__ = ("_aead",)

    def __init__(self, secret: bytes) -> None:
        problem = check_secret(secret)
        if problem is not None:
            raise ValueError(problem)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
        self._aead = AESGCM(key)

    def seal(self, name: str, plain: bytes) -> bytes:
        """``plain`` encrypted and authenticated, bound to the key ``name``."""
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plain, name.encode())

    def open(self, name: str, sealed: bytes) -> bytes:
        """The plain text of a value :meth:`seal` made for ``name``; :class:`SealError`
        otherwise."""
        if not sealed.startswith(_VERSION) or len(sealed) < len(_VERSION) + _NONCE + 16:
            raise SealError(f"{name}: not a sealed value")
        nonce = sealed[len(_VERSION):len(_VERSION) + _NONCE]
        try:
            return self._aead.decrypt(nonce, sealed[len(_VERSION) + _NONCE:], name.encode())
        except InvalidTag:
            raise SealError(f"{name}: does not open with this secret (another fleet's secret, "
                            "or the value was changed)") from None


__all__ = ["MIN_SECRET_LENGTH", "SealError", "Sealer", "check_secret"]
