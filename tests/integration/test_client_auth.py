"""Client certificates (mTLS) over real TLS: who gets in, what the backend learns, what
cannot be spoofed, and Host kept to the verified SNI."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
from pathlib import Path

import pytest
from conftest import Pki, http_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from harness import Offload, TlsPipe, client_context
from http_client import read_responses

from offload.demo.pki import Authority, Issued, key_pem, write_private

NOW = dt.datetime.now(dt.UTC)


def _client_cert(authority: Authority, *, days: int = 30, start: dt.datetime | None = None
                 ) -> Issued:
    start = start or NOW - dt.timedelta(hours=1)
    return authority.issue(["client.example.test"], not_before=start,
                           not_after=start + dt.timedelta(days=days), client=True)


def _crl(authority: Authority, revoked: list[Issued], path: Path) -> Path:
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(authority.certificate.subject)
               .last_update(NOW - dt.timedelta(hours=1))
               .next_update(NOW + dt.timedelta(days=7)))
    for issued in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(issued.certificate.serial_number)
            .revocation_date(NOW - dt.timedelta(minutes=5)).build())
    crl = builder.sign(authority.key, hashes.SHA256())
    path.write_bytes(crl.public_bytes(Encoding.PEM))
    return path


def _context(pki: Pki, tmp_path: Path, client: Issued | None) -> ssl.SSLContext:
    context = client_context(pki.ca)
    if client is not None:
        cert, key = tmp_path / "client.crt", tmp_path / "client.key"
        cert.write_bytes(client.cert_chain())
        write_private(key, key_pem(client.key))
        context.load_cert_chain(cert, key)
    return context


def _request(port: int, context: ssl.SSLContext, extra: bytes = b"",
             host: bytes = b"localhost", server_name: str = "localhost") -> bytes:
    pipe = TlsPipe(port, context, server_name=server_name)
    pipe.send(b"GET /hello HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n")
    try:
        return read_responses(pipe, 1)[0]
    finally:
        pipe.sock.close()


@pytest.fixture
def clients(tmp_path: Path) -> Authority:
    return Authority("offload client CA")


def _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, *,
           mode: str = "required", crl: Path | None = None, cas: tuple[Authority, ...] = (),
           started: list[Offload] | None = None):
    ca = tmp_path / "clients-ca.pem"
    ca.write_bytes(b"".join(authority.pem() for authority in cas or (clients,)))
    lines = f'client_auth = "{mode}"\nclient_ca = ["{ca}"]\n'
    if crl is not None:
        lines += f'client_crl = ["{crl}"]\n'
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=lines))
    if started is not None:
        started.append(instance)
    return server


def test_a_verified_client_reaches_the_backend_with_its_identity(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle):
    server = _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle)
    client = _client_cert(clients)
    response = _request(port, _context(pki, tmp_path, client))
    assert response.startswith(b"HTTP/1.1 200 ")
    seen = server.requests[-1]
    der = client.certificate.public_bytes(Encoding.DER)
    assert seen.header("Client-Cert") == ":" + base64.b64encode(der).decode() + ":"
    assert seen.header("X-SSL-Client-Verify") == "SUCCESS"
    assert seen.header("X-SSL-Client-DN") == "CN=client.example.test"
    assert seen.header("X-SSL-Client-SAN") == "DNS:client.example.test"
    assert seen.header("X-SSL-Client-Fingerprint") == hashlib.sha256(der).hexdigest()


def test_client_cert_chain_names_the_intermediate_ca(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle):
    middle = clients.intermediate("offload client intermediate CA")
    server = _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle,
                    cas=(clients, middle))
    client = middle.issue(["client.example.test"], client=True)
    response = _request(port, _context(pki, tmp_path, client))
    assert response.startswith(b"HTTP/1.1 200 ")
    seen = server.requests[-1]
    der = client.certificate.public_bytes(Encoding.DER)
    assert seen.header("Client-Cert") == ":" + base64.b64encode(der).decode() + ":"
    intermediate = middle.certificate.public_bytes(Encoding.DER)
    assert seen.header("Client-Cert-Chain") == ":" + base64.b64encode(intermediate).decode() + ":"
    direct = _request(port, _context(pki, tmp_path, _client_cert(clients)))
    assert direct.startswith(b"HTTP/1.1 200 ")
    assert server.requests[-1].header("Client-Cert-Chain") is None, "the root is not sent"


@pytest.mark.parametrize(("case", "cause"), [
    ("no certificate", "missing"), ("another CA", "unknown_ca"), ("expired", "expired"),
    ("not yet valid", "not_yet_valid"), ("revoked", "revoked")])
def test_a_bad_client_certificate_fails_the_handshake(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, case, cause):
    revoked = _client_cert(clients)
    crl = _crl(clients, [revoked], tmp_path / "clients.crl") if case == "revoked" else None
    started: list[Offload] = []
    server = _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle,
                    crl=crl, started=started)
    client = {
        "no certificate": None,
        "another CA": _client_cert(Authority("someone else's CA")),
        "expired": _client_cert(clients, start=NOW - dt.timedelta(days=40)),
        "not yet valid": _client_cert(clients, start=NOW + dt.timedelta(days=2)),
        "revoked": revoked,
    }[case]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _request(port, _context(pki, tmp_path, client))
    assert not server.requests
    event = started[0].wait_for(lambda e: e.get("event") == "client_certificate_refused")
    assert (event["cause"], event["client"], event["frontend"]) == (cause, "127.0.0.1", "web")


def test_a_crl_lets_unrevoked_certificates_through(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle):
    crl = _crl(clients, [_client_cert(clients)], tmp_path / "clients.crl")
    _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, crl=crl)
    response = _request(port, _context(pki, tmp_path, _client_cert(clients)))
    assert response.startswith(b"HTTP/1.1 200 ")


def test_optional_client_auth_says_none_without_a_certificate(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle):
    server = _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle,
                    mode="optional")
    response = _request(port, _context(pki, tmp_path, None))
    assert response.startswith(b"HTTP/1.1 200 ")
    assert server.requests[-1].header("X-SSL-Client-Verify") == "NONE"
    assert server.requests[-1].header("Client-Cert") is None


SPOOFED = (b"Client-Cert: :AAAA:\r\nX-SSL-Client-Verify: SUCCESS\r\n"
           b"X-SSL-Client-DN: CN=admin\r\nX-SSL-Client-SAN: DNS:admin\r\n"
           b"X-SSL-Client-Fingerprint: 00\r\nClient-Cert-Chain: :AAAA:\r\n")


@pytest.mark.parametrize("client_auth", ["optional", "none"])
def test_identity_fields_sent_by_the_client_never_reach_the_backend(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, client_auth):
    if client_auth == "none":
        server = http_backend()
        offload(http_config(port, [localhost_bundle], [server.address]))
    else:
        server = _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle,
                        mode=client_auth)
    response = _request(port, _context(pki, tmp_path, None), extra=SPOOFED)
    assert response.startswith(b"HTTP/1.1 200 ")
    seen = server.requests[-1]
    for name in ("Client-Cert", "Client-Cert-Chain", "X-SSL-Client-DN", "X-SSL-Client-SAN",
                 "X-SSL-Client-Fingerprint"):
        assert seen.header(name) is None, name
    expected = ["NONE"] if client_auth == "optional" else []
    assert seen.headers_named("X-SSL-Client-Verify") == expected


def test_host_other_than_the_verified_sni_gets_421(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle):
    server = _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle)
    context = _context(pki, tmp_path, _client_cert(clients))
    assert _request(port, context, host=b"localhost:8443").startswith(b"HTTP/1.1 200 ")
    assert _request(port, context, host=b"LOCALHOST").startswith(b"HTTP/1.1 200 ")
    response = _request(port, context, host=b"admin.example.test")
    assert response.startswith(b"HTTP/1.1 421 ")
    assert [r.header("Host") for r in server.requests] == ["localhost:8443", "LOCALHOST"]


@pytest.mark.parametrize(("target", "host", "allowed"), [
    (b"https://admin.example.test/hello", b"localhost", False),
    (b"https://localhost/hello", b"admin.example.test", True),
])
def test_absolute_form_authority_is_what_is_checked_against_the_sni(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, target, host,
        allowed):
    """One authority everywhere: the absolute-form target's, not the Host header's."""
    server = _start(pki, clients, http_backend, offload, port, tmp_path, localhost_bundle)
    pipe = TlsPipe(port, _context(pki, tmp_path, _client_cert(clients)))
    pipe.send(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    try:
        response = read_responses(pipe, 1)[0]
    finally:
        pipe.sock.close()
    assert response.startswith(b"HTTP/1.1 200 " if allowed else b"HTTP/1.1 421 ")
    assert [r.header("Host") for r in server.requests] == (["localhost"] if allowed else [])
