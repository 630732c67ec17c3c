"""Client certificates (mTLS): loading the CAs and CRLs a frontend checks them against, and the
header fields that tell the backend who the verified client is.

OpenSSL does the verification during the handshake (chain to one of the CAs, validity dates,
revocation when CRLs are configured): a handshake with a bad certificate fails, so a
certificate that reaches :func:`identity_fields` has been verified (CRLs fetched from
distribution points are checked after the handshake, before the connection reaches the
application: :mod:`offload.tls.crl_gate`). The fields follow RFC 9440 (``Client-Cert``,
``Client-Cert-Chain``) and the conventional ``X-SSL-Client-*`` names; the client's own copies
of all of them are always removed (``_REQUEST_DROP`` in :mod:`offload.proto.http_rewrite`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509

from offload.config.model import FrontendConfig
from offload.errors import Issue
from offload.tls.ca_bundle import CaBundle
from offload.tls.policy import ClientAuth


def load_client_auth(frontend: FrontendConfig, base_dir: Path, where: str, now: dt.datetime,
                     ) -> tuple[ClientAuth | None, list[Issue], list[str]]:
    """Read and check a frontend's client CAs and CRLs: (settings, problems, warnings)."""
    mode, ca_files, crl_files = frontend.client_auth, frontend.client_ca, frontend.client_crl
    if mode == "none":
        return None, [], []
    issues: list[Issue] = []
    warnings: list[str] = []
    authorities: list[x509.Certificate] = []
    for index, name in enumerate(ca_files):
        path = base_dir / name
        here = f"{where}.client_ca[{index}]"
        data = _read(path, here, issues)
        if data is None:
            continue
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError:
            issues.append(Issue(here, f"{path} holds no PEM certificate",
                                "give the CA certificate(s) in PEM format"))
            continue
        authorities.extend(certificates)
    for index, name in enumerate(crl_files):
        path = base_dir / name
        here = f"{where}.client_crl[{index}]"
        data = _read(path, here, issues)
        if data is None:
            continue
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            issues.append(Issue(here, f"{path} is not a PEM CRL",
                                f"convert it: openssl crl -inform DER -in {path} -out {path}.pem"))
            continue
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            warnings.append(f"{here}: {path} is out of date (next update was due "
                            f"{next_update:%Y-%m-%d}); every client certificate it covers is "
                            "refused until it is replaced")
    if issues:
        return None, issues, warnings
    crls = tuple(str(base_dir / name) for name in crl_files)
    return ClientAuth(mode == "required", CaBundle(authorities), crls), [], warnings


def _read(path: Path, here: str, issues: list[Issue]) -> bytes | None:
    """The file's content, or None with the reason added to ``issues``."""
    try:
        return path.read_bytes()
    except OSError as error:
        issues.append(Issue(here, f"cannot read {path}: {error.strerror}",
                            "check the path and its permissions"))
        return None


def _visible(text: str) -> bytes:
    """A field value from certificate text: printable ASCII kept, anything else \\xNN-escaped,
    so a hostile subject cannot break the header or smuggle a line."""
    out = []
    for char in text:
        if " " <= char <= "~" and char != "\\":
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out).encode("ascii")


def _names(certificate: x509.Certificate) -> list[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = []
    names += (f"DNS:{name}" for name in san.get_values_for_type(x509.DNSName))
    names += (f"email:{name}" for name in san.get_values_for_type(x509.RFC822Name))
    names += (f"URI:{name}" for name in san.get_values_for_type(x509.UniformResourceIdentifier))
    names += (f"IP:{address}" for address in san.get_values_for_type(x509.IPAddress))
    return names


def identity_fields(leaf_der: bytes | None, authorities: CaBundle | None = None
                    ) -> list[tuple[bytes, bytes]]:
    """The fields describing the client's verified certificate (``NONE`` without one).

    With ``authorities`` (the frontend's client CAs), ``Client-Cert-Chain`` lists the CAs
    between the certificate and the trust anchor, when they are all in the bundle."""
    if leaf_der is None:
        return [(b"X-SSL-Client-Verify", b"NONE")]
    certificate = x509.load_der_x509_certificate(leaf_der)
    digest = hashlib.sha256(leaf_der)
    fields = [(b"Client-Cert", b":" + base64.b64encode(leaf_der) + b":")]  # RFC 9440 §2.2
    chain = (authorities.chain_above(certificate, digest.digest())
             if authorities is not None else None)
    if chain:  # RFC 9440 §2.3: issuer first, each one certifying the one before; no anchor
        fields.append((b"Client-Cert-Chain", b", ".join(
            b":" + base64.b64encode(der) + b":" for der in chain)))
    fields += [
        (b"X-SSL-Client-Verify", b"SUCCESS"),
        (b"X-SSL-Client-DN", _visible(certificate.subject.rfc4514_string())),
        (b"X-SSL-Client-Fingerprint", digest.hexdigest().encode("ascii")),
    ]
    names = _names(certificate)
    if names:
        fields.append((b"X-SSL-Client-SAN", _visible(", ".join(names))))
    return fields


def host_matches_sni(host: bytes, server_name: str | None) -> bool:
    """Whether a request's Host names the server the handshake authenticated (its SNI).

    With client certificates, a connection verified for one name must not reach another (a
    resumed session or a browser coalescing connections would otherwise carry the identity
    across). Without SNI only an IP-literal Host passes: clients send no SNI for addresses.
    """
    name = host.decode("ascii", "replace").lower()
    if name.startswith("["):
        name = name[1:name.find("]")] if "]" in name else name
    else:
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    name = name.rstrip(".")
    if server_name is None:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return name == server_name.lower().rstrip(".")
