"""A tiny certificate authority: a CA and leaf certificates for the demo and for tests.

Not for production certificates; it exists so that ``offload demo`` works on a fresh machine
and tests can make exactly the certificates they need (wildcards, RSA and ECDSA, expired ones).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from offload.tls.keys import KeyType, PrivateKey, key_pem, new_key


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    """A leaf certificate with its key and the chain above it."""

    certificate: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    def bundle(self) -> bytes:
        """Leaf, chain and key in one PEM file (what ``--cert`` takes)."""
        return self.cert_chain() + key_pem(self.key)

    def cert_chain(self) -> bytes:
        return cert_pem(self.certificate) + b"".join(cert_pem(c) for c in self.chain)


class Authority:
    """A self-signed CA (optionally with an intermediate) that issues leaf certificates."""

    def __init__(self, name: str = "offload demo CA", key_type: KeyType = "ecdsa",
                 *, key: PrivateKey | None = None,
                 certificate: x509.Certificate | None = None) -> None:
        self.key = key or new_key(key_type)
        if certificate is None:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            now = dt.datetime.now(dt.UTC)
            certificate = (
                x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject)
                .public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256())
            )
        self.certificate = certificate
        self.parents: tuple[x509.Certificate, ...] = ()

    def pem(self) -> bytes:
        return cert_pem(self.certificate)

    def intermediate(self, name: str = "offload intermediate CA",
                     key_type: KeyType = "ecdsa") -> Authority:
        """A CA signed by this one; its leaves carry it in their chain."""
        key = new_key(key_type)
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        child = Authority(key=key, certificate=certificate)
        child.parents = (certificate, *self.parents)
        return child

    def issue(self, names: list[str], key_type: KeyType = "ecdsa", *,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              days: int = 90, client: bool = False, crl_urls: tuple[str, ...] = ()) -> Issued:
        """A server certificate (``client``: a client one) for DNS names and IP addresses;
        the first name is the CN. ``crl_urls``: where its CRL is published."""
        key = new_key(key_type)
        now = dt.datetime.now(dt.UTC)
        not_before = not_before or now - dt.timedelta(hours=1)
        not_after = not_after or now + dt.timedelta(days=days)
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                  else ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        if crl_urls:
            builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier(url) for url in crl_urls], None, None, None)]),
                critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        chain = tuple(c for c in self.parents)
        return Issued(certificate, key, chain)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@dataclass(frozen=True)
class DemoFiles:
    """Where the demo's CA and localhost bundle live."""

    directory: Path
    ca: Path
    bundle: Path


def demo_files(directory: Path) -> DemoFiles:
    """Create (once) a local CA and a ``localhost`` bundle in ``directory``; reuse them after.

    A bundle that expires within 30 days is issued again from the same CA.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    bundle = directory / "localhost.pem"
    if ca_cert.exists() and ca_key.exists():
        loaded_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        if not isinstance(loaded_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"{ca_key}: not an ECDSA or RSA key")
        authority = Authority(key=loaded_key,
                              certificate=x509.load_pem_x509_certificate(ca_cert.read_bytes()))
    else:
        authority = Authority()
        write_private(ca_key, key_pem(authority.key))
        ca_cert.write_bytes(authority.pem())
    if not bundle.exists() or _expires_soon(bundle):
        issued = authority.issue(["localhost", "127.0.0.1", "::1"], days=365)
        write_private(bundle, issued.bundle())
    return DemoFiles(directory, ca_cert, bundle)


def _expires_soon(bundle: Path) -> bool:
    try:
        certificate = x509.load_pem_x509_certificates(bundle.read_bytes())[0]
    except (ValueError, IndexError):
        return True
    return certificate.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=30)
