"""TLS-ALPN-01 (RFC 8737): the validation certificate, and the TLS context that serves it.

The CA connects to the TLS listener itself, sends the name being validated as SNI and offers
exactly one ALPN protocol, ``acme-tls/1``. The TLS stream recognises that ClientHello (see
:mod:`offload.proto.client_hello`) and, when a challenge for the name is pending, completes
the handshake with the self-signed validation certificate instead of the site's certificate;
ordinary clients never see it, because they never offer ``acme-tls/1`` alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from offload.acme.storage import AcmeStorage
from offload.tls.keys import key_pem
from offload.tls.sni import SNI_ATTRIBUTE

ACME_TLS_ALPN = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
_CACHE_SIZE = 16

ChallengeLookup = Callable[[str | None], ssl.SSLContext | None]
"""Given the SNI of an ``acme-tls/1``-only ClientHello: the context answering it, or None."""


def validation_bundle(name: str, key_authorization: str) -> bytes:
    """A self-signed certificate for ``name`` carrying the critical acmeIdentifier extension
    (the SHA-256 of the key authorization as a DER OCTET STRING), with its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER,
                                                  b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (certificate.public_bytes(serialization.Encoding.PEM)
            + key_pem(key))


def _keep_context(ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                  context: ssl.SSLContext) -> None:
    """OpenSSL falls back to the first context's SNI callback when the current one has none;
    this one keeps the validation context in place."""
    setattr(ssl_object, SNI_ATTRIBUTE, server_name)


class ChallengeContexts:
    """A worker's view of the pending TLS-ALPN-01 challenges, read from the storage directory."""

    def __init__(self, storage: AcmeStorage) -> None:
        self._storage = storage
        self._cache: dict[tuple[str, int, int], ssl.SSLContext] = {}

    def lookup(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name is None:
            return None
        path = self._storage.tls_alpn01(server_name)
        if path is None:
            return None
        try:
            stat = path.stat()
            key = (str(path), stat.st_ino, stat.st_mtime_ns)
            context = self._cache.get(key)
            if context is None:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(path)
                context.set_alpn_protocols([ACME_TLS_ALPN])
                context.sni_callback = _keep_context
                if len(self._cache) >= _CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = context
        except (OSError, ssl.SSLError):
            return None  # removed or replaced while we looked: the CA will retry
        return context
