"""A frontend's client CA bundle as an index: who issued a verified client certificate, and the
chain from it up to the trust anchor.

OpenSSL verifies client certificates during the handshake, but Python's ``ssl`` (before 3.13,
and never for a resumed session) does not say which chain it built. Both the fetched-CRL check
(the CRL must be signed by the certificate's issuer) and the RFC 9440 ``Client-Cert-Chain``
field need it, so it is rebuilt here from the configured CAs: every link is a checked
signature, never just a matching name. A chain through an intermediate that only the client
sent (one not in ``client_ca``) cannot be rebuilt; callers then know nothing rather than
something wrong.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAX_DEPTH = 8
"""Longest CA chain followed (OpenSSL's own default limit is 100; real ones have 2 to 4)."""
MEMO_SIZE = 4096
"""Client certificates whose issuer is remembered (a signature check costs about 90 µs)."""


def signer_id(ca: x509.Certificate) -> bytes:
    """Who signs, independent of which copy of the CA certificate: its name and its key."""
    spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(ca.subject.public_bytes() + b"\0" + spki).digest()


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class CaBundle:
    """The CA certificates a frontend trusts for client certificates (parsed once)."""

    def __init__(self, certificates: list[x509.Certificate]) -> None:
        self.certificates = tuple(certificates)
        self.pem = "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certificates)
        self.signers = tuple(signer_id(c) for c in certificates)
        self._by_subject: dict[bytes, list[int]] = {}
        for index, certificate in enumerate(certificates):
            self._by_subject.setdefault(certificate.subject.public_bytes(), []).append(index)
        self._above = [self._walk(index) for index in range(len(certificates))]
        self._memo: dict[bytes, int] = {}

    def _parent(self, index: int) -> int | None:
        """The bundle CA that signed CA ``index`` (None: self-signed, or issuer unknown)."""
        certificate = self.certificates[index]
        if certificate.issuer == certificate.subject and _issued_by(certificate, certificate):
            return None
        for candidate in self._by_subject.get(certificate.issuer.public_bytes(), ()):
            if candidate != index and _issued_by(certificate, self.certificates[candidate]):
                return candidate
        return None

    def _walk(self, index: int) -> tuple[bytes, ...] | None:
        """DER of CA ``index`` and the CAs above it, without the self-signed trust anchor at
        the top; None if the walk does not reach one in the bundle."""
        chain: list[bytes] = []
        seen = {index}
        current: int | None = index
        while current is not None:
            certificate = self.certificates[current]
            parent = self._parent(current)
            if parent is None:
                anchored = (certificate.issuer == certificate.subject
                            and _issued_by(certificate, certificate))
                return tuple(chain) if anchored else None
            chain.append(certificate.public_bytes(Encoding.DER))
            if parent in seen or len(chain) >= MAX_DEPTH:
                return None
            seen.add(parent)
            current = parent
        return None

    def issuer_of(self, leaf: x509.Certificate, fingerprint: bytes) -> int | None:
        """The index of the bundle CA whose signature is on ``leaf`` (``fingerprint``: the
        SHA-256 of its DER, the memo key), or None when its issuer is not in the bundle."""
        memo = self._memo
        found = memo.get(fingerprint)
        if found is not None:
            return found
        for candidate in self._by_subject.get(leaf.issuer.public_bytes(), ()):
            if _issued_by(leaf, self.certificates[candidate]):
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[fingerprint] = candidate
                return candidate
        return None

    def chain_above(self, leaf: x509.Certificate, fingerprint: bytes) -> tuple[bytes, ...] | None:
        """The certificates (DER) from the leaf's issuer up to, without, the trust anchor: what
        RFC 9440 §2.3 ``Client-Cert-Chain`` carries. Empty when a root issued the leaf; None
        when the chain cannot be rebuilt from the bundle."""
        issuer = self.issuer_of(leaf, fingerprint)
        return None if issuer is None else self._above[issuer]
