"""Load certificates and keys from PEM files, check them, and describe what they serve.

A source is a PEM bundle (chain and key in one file), a chain with a separate key file, or a
directory of bundles (``name.pem``, or ``name.crt`` with ``name.key`` beside it). Loading checks
that the key matches the certificate, puts the chain in order (leaf, then each issuer), refuses
expired and not-yet-valid certificates and warns about one that expires within 30 days.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from offload.errors import CertificateError

EXPIRY_WARNING_DAYS = 30
CERT_SUFFIXES = (".pem", ".crt", ".cer")
PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKERS = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----",
                b"-----BEGIN EC PRIVATE KEY-----", b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


@dataclass(frozen=True)
class LoadedCertificate:
    """A checked certificate chain with its key, ready to go into an SSL context."""

    source: str
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    names: tuple[str, ...]
    key_type: str
    key_bits: int
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str
    warnings: tuple[str, ...] = ()

    def days_left(self, now: dt.datetime) -> int:
        """Whole days until the certificate expires (negative once expired)."""
        return (self.not_after - now).days

    def describe(self) -> str:
        """One line for logs and summaries."""
        return (f"{', '.join(self.names) or '(no names)'} [{self.key_type} {self.key_bits}] "
                f"expires {self.not_after:%Y-%m-%d} from {self.source}")


def _split_pem(data: bytes) -> tuple[list[x509.Certificate], list[bytes]]:
    certificates = x509.load_pem_x509_certificates(data) if PEM_CERT in data else []
    keys = []
    for marker in _KEY_MARKERS:
        start = data.find(marker)
        while start >= 0:
            end_marker = marker.replace(b"BEGIN", b"END")
            end = data.find(end_marker, start)
            if end < 0:
                break
            keys.append(data[start : end + len(end_marker)])
            start = data.find(marker, end)
    return certificates, keys


def _parse_file(path: str, what: str) -> tuple[list[x509.Certificate], list[bytes]]:
    try:
        return _split_pem(_read(path, what))
    except ValueError as error:
        detail = str(error).split(". See https://", 1)[0]  # cryptography's FAQ link is noise
        raise CertificateError(path, f"not a valid PEM file ({detail})",
                               f"check that the file holds the PEM {what}") from None


def _public_der(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _key_kind(key: object) -> tuple[str, int]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDSA", key.curve.key_size
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA", key.key_size
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PrivateKey):
        return "Ed448", 456
    raise ValueError("unsupported key type")


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if not dns:
        dns = [str(attr.value) for attr in
               certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names = []
    for name in dns:
        normal = name.strip().rstrip(".").lower()
        if normal and normal not in names:
            names.append(normal)
    return tuple(names)


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _order_chain(leaf: x509.Certificate, others: list[x509.Certificate]) -> tuple[
        list[x509.Certificate], list[x509.Certificate]]:
    """Leaf first, then each issuer found among ``others``; returns (chain, unused)."""
    chain, remaining = [leaf], list(others)
    while remaining:
        current = chain[-1]
        if current.issuer == current.subject:
            break
        parent = next((cert for cert in remaining if _issued_by(current, cert)), None)
        if parent is None:
            break
        chain.append(parent)
        remaining.remove(parent)
    return chain, remaining


@dataclass(frozen=True)
class KeyPolicy:
    """How keys may be stored: who may read the file, and the passphrase of encrypted keys."""

    allow_readable: bool = False
    passphrase: bytes | None = field(default=None, repr=False)


def readable_by(mode: int) -> str | None:
    """Who besides the owner may read a file of ``mode`` (``"group"``, ``"others"``, ``"group
    and others"``), or None: the rule for every secret offload reads (keys, the admin token)."""
    who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
    return who or None


def _check_key_mode(path: str, policy: KeyPolicy) -> None:
    """A private key readable by other users is a key other users have: refuse it."""
    if policy.allow_readable:
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # reading it will report the problem
    who = readable_by(mode)
    if who is not None:
        raise CertificateError(
            path, f"the private key file is readable by {who} (mode {mode & 0o777:o})",
            f"run `chmod 600 {path}`, or set global.allow_readable_keys = true if this is on "
            "purpose")


def _load_key(pem: bytes, source: str, passphrase: bytes | None) -> object:
    encrypted = b"ENCRYPTED" in pem.split(b"\n", 2)[0] or b"Proc-Type: 4,ENCRYPTED" in pem
    try:
        # cryptography's RSA check (primality of p and q) costs 40 ms per key: 7 minutes for
        # 10,000. OpenSSL, which signs the handshakes, does not run it either; the key is
        # still checked against its certificate, here and by OpenSSL when it is loaded.
        return serialization.load_pem_private_key(pem, password=passphrase if encrypted else None,
                                                  unsafe_skip_rsa_key_validation=True)
    except TypeError:
        raise CertificateError(
            source, "the private key is encrypted and no passphrase was given",
            "name where the passphrase is with passphrase_file or passphrase_env on this "
            "certificate entry",
        ) from None
    except ValueError as error:
        if encrypted:
            raise CertificateError(source, "cannot decrypt the private key: wrong passphrase",
                                   "check the passphrase file or environment variable") from None
        raise CertificateError(source, f"the private key cannot be read ({error})",
                               "check that the file holds a PEM private key") from None


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(path, f"{what} file not found", "check the path") from None
    except PermissionError:
        raise CertificateError(path, f"{what} file is not readable by this user",
                               "fix its owner or permissions") from None
    except IsADirectoryError:
        raise CertificateError(path, f"expected a {what} file, found a directory") from None
    except OSError as error:
        raise CertificateError(path, f"cannot read the {what} file: {error.strerror}") from None


def load_certificate(cert_path: str, key_path: str | None = None,
                     now: dt.datetime | None = None, policy: KeyPolicy = KeyPolicy(),
                     ) -> LoadedCertificate:
    """Load and check one certificate chain and its key (from the bundle or ``key_path``)."""
    now = now or dt.datetime.now(dt.UTC)
    certificates, keys = _parse_file(cert_path, "certificate")
    if not certificates:
        raise CertificateError(cert_path, "no certificate found in the file",
                               "the file must hold \"-----BEGIN CERTIFICATE-----\" blocks")
    key_source = cert_path
    if key_path is not None:
        key_source = key_path
        _, keys = _parse_file(key_path, "key")
        if not keys:
            raise CertificateError(key_path, "no private key found in the file",
                                   "the key file must hold a PEM private key")
    if not keys:
        raise CertificateError(cert_path, "no private key found",
                               "append the key to the bundle, or name the key file with `key`")
    if len(keys) > 1:
        raise CertificateError(key_source, "more than one private key in the file",
                               "keep exactly one key per bundle")
    _check_key_mode(key_source, policy)
    key = _load_key(keys[0], key_source, policy.passphrase)
    try:
        key_type, key_bits = _key_kind(key)
    except ValueError:
        raise CertificateError(key_source, "unsupported key type",
                               "use an ECDSA, RSA or Ed25519 key") from None
    key_der = _public_der(key)
    leaf = next((cert for cert in certificates if _public_der(cert) == key_der), None)
    if leaf is None:
        raise CertificateError(
            key_source, "the private key does not match the certificate",
            "pair each certificate with the key it was issued for",
        )
    chain, unused = _order_chain(leaf, [cert for cert in certificates if cert is not leaf])
    warnings = []
    if unused:
        warnings.append(f"{len(unused)} certificate(s) in the file are not part of the "
                        "leaf's chain and are not served")
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if not_after <= now:
        raise CertificateError(cert_path, f"the certificate expired on {not_after:%Y-%m-%d %H:%M} UTC",
                               "renew it; offload does not serve expired certificates")
    if not_before > now:
        raise CertificateError(cert_path,
                               f"the certificate is not valid before {not_before:%Y-%m-%d %H:%M} UTC",
                               "check the system clock, or deploy it once it is valid")
    days = (not_after - now).days
    if days < EXPIRY_WARNING_DAYS:
        warnings.append(f"expires in {days} day(s), on {not_after:%Y-%m-%d}")
    key_pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return LoadedCertificate(
        source=cert_path if key_path is None else f"{cert_path} + {key_path}",
        chain_pem=b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain),
        key_pem=key_pem,
        names=_names(leaf),
        key_type=key_type,
        key_bits=key_bits,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        not_before=not_before,
        not_after=not_after,
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        warnings=tuple(warnings),
    )


def directory_entries(directory: str) -> list[tuple[str, str | None]]:
    """The (certificate, key) file pairs in a directory of bundles, in name order."""
    entries: list[tuple[str, str | None]] = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        stem, suffix = os.path.splitext(name)
        if name.startswith(".") or suffix.lower() not in CERT_SUFFIXES or not os.path.isfile(path):
            continue
        key = os.path.join(directory, stem + ".key")
        entries.append((path, key if os.path.isfile(key) else None))
    return entries


def load_source(cert: str, key: str | None = None, now: dt.datetime | None = None,
                policy: KeyPolicy = KeyPolicy()) -> list[LoadedCertificate]:
    """Load a certificate source: one file (with optional key file) or a directory of bundles."""
    if os.path.isdir(cert):
        if key is not None:
            raise CertificateError(cert, "a key file cannot be given for a directory",
                                   "put each key in its bundle or beside it as NAME.key")
        try:
            entries = directory_entries(cert)
        except OSError as error:
            raise CertificateError(cert, f"cannot list the directory: {error.strerror}") from None
        if not entries:
            raise CertificateError(cert, "the directory holds no certificate files",
                                   f"add bundles named *{', *'.join(CERT_SUFFIXES)}")
        return [load_certificate(path, key_file, now, policy) for path, key_file in entries]
    return [load_certificate(cert, key, now, policy)]


def load_into_context(context: ssl.SSLContext, certificate: LoadedCertificate) -> None:
    """Add a certificate and key to an SSL context without writing the key to disk."""
    fd = os.memfd_create("offload-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, certificate.chain_pem + certificate.key_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
