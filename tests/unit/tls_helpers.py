"""Shared helpers for the TLS unit tests: test certificates and in-memory handshakes."""

from __future__ import annotations

import datetime as dt
import functools
import os
import ssl
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from offload.demo.pki import Authority, Issued, KeyType, new_key, write_private
from offload.tls.certs import LoadedCertificate, load_certificate
from offload.tls.policy import server_context

# Keys written by the tests are readable by their owner only, as real keys must be: offload
# refuses private key files that group or others can read (tests of that refusal chmod
# their files explicitly).
os.umask(0o077)

_MAX_ROUNDS = 50


@functools.cache
def authority() -> Authority:
    """One test CA for the whole run (key generation is the slow part)."""
    return Authority("offload test CA")


@functools.cache
def issued(names: tuple[str, ...], key_type: KeyType = "ecdsa") -> Issued:
    """A leaf from the shared CA, cached by names and key type."""
    return authority().issue(list(names), key_type)


def write_bundle(directory: Path, name: str, certificate: Issued) -> Path:
    """Write leaf, chain and key as one PEM bundle and return its path."""
    path = directory / name
    write_private(path, certificate.bundle())
    return path


def load_issued(directory: Path, name: str, certificate: Issued) -> LoadedCertificate:
    """Write ``certificate`` as a bundle under ``directory`` and load it."""
    return load_certificate(str(write_bundle(directory, name, certificate)))


def leaf_der(certificate: Issued) -> bytes:
    return certificate.certificate.public_bytes(serialization.Encoding.DER)


def custom_leaf(ca: Authority, common_name: str, dns_names: list[str]) -> Issued:
    """A leaf with a chosen CN and SAN DNS names (none: no SAN extension at all)."""
    key = new_key("ecdsa")
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=90))
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key, ca.parents)


def legacy_server_context(alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """``server_context("legacy")``; Python deprecates setting TLS 1.0 as the minimum."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return server_context("legacy", alpn)


def policy_context(policy: str, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    if policy == "legacy":
        return legacy_server_context(alpn)
    return server_context(policy, alpn)


def client_context(
    ca_pem: bytes | None = None,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """A client context; with ``ca_pem`` it verifies the chain and the host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_pem is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    with warnings.catch_warnings():
        # TLS 1.0/1.1 bounds are deprecated in Python, but old clients are what we test.
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def _step(side: ssl.SSLObject) -> bool:
    """Advance one side's handshake; True once it is complete."""
    try:
        side.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def handshake(
    client_context: ssl.SSLContext,
    server_context: ssl.SSLContext,
    server_hostname: str | None = None,
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a full TLS handshake in memory; return (client, server) or raise the ssl error."""
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    client_done = server_done = False
    for _ in range(_MAX_ROUNDS):
        if not client_done:
            client_done = _step(client)
        server_in.write(client_out.read())
        if not server_done:
            server_done = _step(server)
        client_in.write(server_out.read())
        if client_done and server_done:
            return client, server
    raise AssertionError(f"handshake did not finish in {_MAX_ROUNDS} rounds")


def served_leaf(client: ssl.SSLObject) -> bytes:
    """The DER leaf certificate the server presented to ``client``."""
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return der


def cipher_name(side: ssl.SSLObject) -> str:
    """The negotiated cipher suite's name."""
    cipher = side.cipher()
    assert cipher is not None
    return cipher[0]
