"""TLS policy and certificate selection, checked with openssl s_client and Python clients."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
from conftest import tcp_config
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import Recording, client_context, need, tls_connect


def _pong(conn: socket.socket, recording: Recording) -> None:
    """Answer the first chunk, then close (so s_client ends on its own)."""
    data = conn.recv(4096)
    recording.data += data
    conn.sendall(b"pong:" + data)


def s_client(port: int, ca, *args: str, server_name: str = "localhost",
             send: bytes = b"ping\n") -> subprocess.CompletedProcess[str]:
    openssl = need("openssl", "openssl")
    command = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name,
               "-CAfile", str(ca), "-verify_return_error", "-brief", "-ign_eof", *args]
    return subprocess.run(command, input=send.decode(), capture_output=True, text=True,
                          timeout=20, check=False)


@pytest.fixture
def pong_offload(pki, localhost_bundle, backend, offload, port):
    def start(frontend: str = "", certificates=None):
        server = backend(_pong)
        instance = offload(tcp_config(port, certificates or [localhost_bundle], [server.address],
                                      frontend=frontend))
        return instance, server

    return start


def test_openssl_tls13(pki, pong_offload, port):
    pong_offload()
    result = s_client(port, pki.ca, "-tls1_3")
    assert result.returncode == 0, result.stderr
    assert "Protocol version: TLSv1.3" in result.stderr
    assert "Verification: OK" in result.stderr
    assert "pong:ping" in result.stdout


def test_openssl_tls12_uses_ecdhe_aead(pki, pong_offload, port):
    pong_offload()
    result = s_client(port, pki.ca, "-tls1_2")
    assert result.returncode == 0, result.stderr
    assert "Protocol version: TLSv1.2" in result.stderr
    suite = next(line for line in result.stderr.splitlines() if line.startswith("Ciphersuite"))
    # the client's order wins (test_tls_negotiation.py): here, s_client's default first choice
    assert suite.split(": ")[1] in ("ECDHE-ECDSA-AES256-GCM-SHA384",
                                    "ECDHE-ECDSA-AES128-GCM-SHA256",
                                    "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert "pong:ping" in result.stdout


@pytest.mark.parametrize("flag", ["-tls1_1", "-tls1"])
def test_openssl_old_versions_refused(pki, pong_offload, port, flag):
    instance, server = pong_offload()
    result = s_client(port, pki.ca, flag, "-cipher", "DEFAULT@SECLEVEL=0")
    assert result.returncode != 0
    assert "alert protocol version" in result.stderr
    assert "pong" not in result.stdout
    assert instance.wait_msg("handshake failed")["reason"] == "protocol_version"
    assert server.connections == []


def test_cbc_suites_refused_by_default(pki, pong_offload, port):
    pong_offload()
    result = s_client(port, pki.ca, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
    assert result.returncode != 0
    assert "handshake failure" in result.stderr


def test_client_renegotiation_refused(pki, pong_offload, port):
    pong_offload()
    openssl = need("openssl", "openssl")
    command = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
               "-CAfile", str(pki.ca), "-tls1_2"]
    result = subprocess.run(command, input="R\n", capture_output=True, text=True, timeout=20,
                            check=False)
    assert "RENEGOTIATING" in result.stdout + result.stderr
    assert "no renegotiation" in result.stderr


def test_modern_policy_is_tls13_only(pki, pong_offload, port):
    pong_offload(frontend='tls_policy = "modern"')
    assert s_client(port, pki.ca, "-tls1_3").returncode == 0
    refused = s_client(port, pki.ca, "-tls1_2")
    assert refused.returncode != 0
    assert "alert protocol version" in refused.stderr


def test_legacy_policy_allows_tls11_with_a_warning(pki, pong_offload, port):
    instance, _ = pong_offload(frontend='tls_policy = "legacy"')
    assert any("legacy" in str(e.get("msg")) and e.get("level") == "warning"
               for e in instance.events)
    result = s_client(port, pki.ca, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert result.returncode == 0, result.stderr
    assert "Protocol version: TLSv1.1" in result.stderr


def test_no_compression(pki, pong_offload, port):
    pong_offload()
    with tls_connect(port, client_context(pki.ca)) as tls:
        assert tls.compression() is None


def _peer(tls: ssl.SSLSocket) -> x509.Certificate:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


def test_sni_exact_then_wildcard_then_default(pki, pong_offload, port):
    default = pki.bundle(["default.test"])
    exact = pki.bundle(["www.example.test"])
    wildcard = pki.bundle(["*.example.test"])
    pong_offload(certificates=[default, exact, wildcard])
    loose = client_context(pki.ca)
    loose.check_hostname = False
    cases = {
        "www.example.test": ["www.example.test"],
        "api.example.test": ["*.example.test"],
        "WWW.Example.Test.": ["www.example.test"],
        "example.test": ["default.test"],
        "a.b.example.test": ["default.test"],
        "unknown.test": ["default.test"],
    }
    for server_name, expected in cases.items():
        with tls_connect(port, loose, server_name=server_name) as tls:
            assert _names(_peer(tls)) == expected, server_name
    strict = client_context(pki.ca)
    with tls_connect(port, strict, server_name="api.example.test") as tls:
        assert tls.version() == "TLSv1.3"  # the wildcard validates for the client


def test_ecdsa_and_rsa_for_the_same_name(pki, pong_offload, port):
    ecdsa = pki.bundle(["dual.test"], "ecdsa")
    rsa_bundle = pki.bundle(["dual.test"], "rsa")
    pong_offload(certificates=[ecdsa, rsa_bundle])
    for ciphers, key_class in (("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
                               ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey)):
        context = client_context(pki.ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
        with tls_connect(port, context, server_name="dual.test") as tls:
            assert isinstance(_peer(tls).public_key(), key_class)
    ecdsa_only = s_client(port, pki.ca, "-tls1_3", "-sigalgs", "ECDSA+SHA256",
                          server_name="dual.test")
    rsa_only = s_client(port, pki.ca, "-tls1_3", "-sigalgs", "RSA-PSS+SHA256",
                        server_name="dual.test")
    assert "Signature type: ECDSA" in ecdsa_only.stderr, ecdsa_only.stderr
    assert "Signature type: RSA-PSS" in rsa_only.stderr, rsa_only.stderr


def test_expired_certificate_refused_at_start(pki, offload, port, tmp_path):
    import datetime as dt

    from offload.demo.pki import write_private

    now = dt.datetime.now(dt.UTC)
    expired = tmp_path / "expired.pem"
    write_private(expired, pki.authority.issue(
        ["localhost"], not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1)).bundle())
    instance = offload(tcp_config(port, [expired], ["127.0.0.1:9"]), ready=False)
    assert instance.process.wait(15) == 1
    output = "\n".join(instance.lines)
    assert "frontends[0].certificates[0]" in output
    assert f"{expired}: the certificate expired on" in output


def test_expiring_certificate_warns_at_start(pki, offload, port):
    soon = pki.bundle(["localhost"], days=10)
    instance = offload(tcp_config(port, [soon], ["127.0.0.1:9"]))
    warning = instance.wait_for(lambda e: "expires in" in str(e.get("msg")))
    assert warning["level"] == "warning"
    loaded = instance.wait_msg("certificate loaded")
    assert loaded["names"] == ["localhost"] and loaded["key"] == "ECDSA 256"


def _encrypted_bundle(pki, path, passphrase: bytes):
    from cryptography.hazmat.primitives import serialization

    issued = pki.authority.issue(["localhost"])
    encrypted = issued.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(passphrase))
    from offload.demo.pki import write_private

    write_private(path, issued.cert_chain() + encrypted)


@pytest.mark.parametrize("source", ["file", "env"])
def test_encrypted_key_with_passphrase_from_file_or_env(pki, backend, offload, port, tmp_path,
                                                        source):
    from harness import Offload, echo

    _encrypted_bundle(pki, tmp_path / "site.pem", b"s3cret passphrase")
    (tmp_path / "pass.txt").write_text("s3cret passphrase\n")
    entry = ('{ cert = "site.pem", passphrase_file = "pass.txt" }' if source == "file"
             else '{ cert = "site.pem", passphrase_env = "OFFLOAD_TEST_PASSPHRASE" }')
    server = backend(echo)
    config = tcp_config(port, [tmp_path / "site.pem"], [server.address]).replace(
        f'certificates = ["{tmp_path / "site.pem"}"]', f"certificates = [{entry}]")
    path = tmp_path / "offload.toml"
    path.write_text(config)
    instance = Offload(path, env={"OFFLOAD_TEST_PASSPHRASE": "s3cret passphrase"})
    try:
        instance.wait_ready()
        with tls_connect(port, client_context(pki.ca)) as tls:
            tls.sendall(b"ok")
            assert tls.recv(2) == b"ok"
        assert not any("s3cret" in line for line in instance.lines)
    finally:
        instance.kill()


def test_wrong_passphrase_and_readable_key_fail_the_start(pki, offload, port, tmp_path):
    import os

    _encrypted_bundle(pki, tmp_path / "enc.pem", b"right")
    os.environ["OFFLOAD_WRONG"] = "XyZzY-not-it"
    readable = pki.bundle(["localhost"], name="readable.pem", directory=tmp_path)
    readable.chmod(0o644)
    config = tcp_config(port, [readable], ["127.0.0.1:9"]).replace(
        f'certificates = ["{readable}"]',
        f'certificates = ["{readable}", {{ cert = "{tmp_path / "enc.pem"}", '
        f'passphrase_env = "OFFLOAD_WRONG" }}]')
    instance = offload(config, ready=False)
    assert instance.process.wait(15) == 1
    output = "\n".join(instance.lines)
    assert f"{readable}: the private key file is readable by group and others (mode 644)" in output
    assert "cannot decrypt the private key: wrong passphrase" in output
    assert "XyZzY" not in output  # a passphrase is never printed
