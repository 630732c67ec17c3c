"""Where ACME state lives on disk, and the one safe way to write it.

::

    <storage>/account.key                      the account key (EC P-256, mode 0600), made once
    <storage>/certificates/<first name>.pem    issued chain + key, replaced by rename
    <storage>/challenges/http-01/<token>       key authorization of a pending HTTP-01 challenge
    <storage>/challenges/tls-alpn-01/<name>.pem  validation certificate + key (RFC 8737)

Why files for challenges: every worker, of this generation or the next, answers a challenge
by reading one small file when the CA asks, so the ACME process needs no channel to the
workers, and instances sharing the directory answer for each other. Every file is written to
a temporary name, flushed and renamed over the old one, so a reader sees the old file or the
new one, never half of one; the directories are 0700 and the files 0600.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""RFC 8555 §8.1: a token is base64url; anything else names no challenge of ours."""
_NAME = re.compile(r"[a-z0-9.-]{1,253}")


def valid_token(token: str) -> bool:
    """Whether ``token`` can be an ACME challenge token (and so a file name here)."""
    return _TOKEN.fullmatch(token) is not None


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a DNS name we validate (and so a file name here)."""
    return _NAME.fullmatch(name) is not None and ".." not in name


def replace_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a reader sees old or new, never half),
    readable by the owner only; :func:`offload.demo.pki.write_private` writes in place."""
    # pid and thread: the ACME process's fleet thread writes files too
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class AcmeStorage:
    """The paths of one storage directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.account_key = root / "account.key"
        self.certificates = root / "certificates"
        self._http01 = root / "challenges" / "http-01"
        self._tls_alpn01 = root / "challenges" / "tls-alpn-01"

    def create(self) -> None:
        """Make the directories (0700); an existing one keeps its mode."""
        for directory in (self.root, self.certificates, self._http01, self._tls_alpn01):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def certificate(self, names: tuple[str, ...]) -> Path:
        return self.certificates / f"{names[0]}.pem"

    # HTTP-01 (RFC 8555 §8.3)

    def put_http01(self, token: str, key_authorization: str) -> None:
        replace_private(self._http01 / token, key_authorization.encode("ascii"))

    def remove_http01(self, token: str) -> None:
        (self._http01 / token).unlink(missing_ok=True)

    def http01(self, token: str) -> bytes | None:
        """The key authorization for ``token``, if that challenge is pending."""
        if not _TOKEN.fullmatch(token):
            return None
        try:
            return (self._http01 / token).read_bytes()
        except OSError:
            return None

    # TLS-ALPN-01 (RFC 8737)

    def put_tls_alpn01(self, name: str, bundle: bytes) -> None:
        replace_private(self._tls_alpn01 / f"{name}.pem", bundle)

    def remove_tls_alpn01(self, name: str) -> None:
        (self._tls_alpn01 / f"{name}.pem").unlink(missing_ok=True)

    def tls_alpn01(self, name: str) -> Path | None:
        """The validation bundle for ``name``, if that challenge is pending."""
        name = name.lower()
        if not _NAME.fullmatch(name) or ".." in name:
            return None
        path = self._tls_alpn01 / f"{name}.pem"
        return path if path.is_file() else None
