"""Tests for offload.tls.policy: the server contexts each TLS policy builds."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from tls_helpers import cipher_name, client_context, handshake, issued, load_issued, policy_context

from offload.tls.certs import LoadedCertificate, load_into_context
from offload.tls.policy import POLICIES

ALL = ["intermediate", "modern", "legacy"]
VERSION_REFUSED = "UNSUPPORTED_PROTOCOL|PROTOCOL_VERSION"
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


@pytest.fixture
def certificate(tmp_path: Path) -> LoadedCertificate:
    return load_issued(tmp_path, "policy.pem", issued(("policy.example.com",)))


def _serving(policy: str, certificate: LoadedCertificate,
             alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    context = policy_context(policy, alpn)
    load_into_context(context, certificate)
    return context


@pytest.mark.parametrize(("policy", "minimum"), [
    ("intermediate", ssl.TLSVersion.TLSv1_2),
    ("modern", ssl.TLSVersion.TLSv1_3),
    ("legacy", ssl.TLSVersion.TLSv1),
])
def test_minimum_version(policy: str, minimum: ssl.TLSVersion) -> None:
    context = policy_context(policy)
    assert context.minimum_version == minimum
    assert context.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED


@pytest.mark.parametrize("policy", ALL)
def test_common_options(policy: str) -> None:
    context = policy_context(policy)
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.options & ssl.OP_NO_TICKET
    assert context.num_tickets == 1
    assert context.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("policy", ALL)
def test_the_client_chooses_the_cipher(policy: str) -> None:
    """Mozilla's current guidance, in every policy: the client knows whether it has AES
    hardware (ChaCha20 first) or not."""
    context = policy_context(policy)
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


@pytest.mark.parametrize("policy", ["intermediate", "legacy"])
@pytest.mark.parametrize("first", ["ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-GCM-SHA256",
                                   "ECDHE-ECDSA-AES256-GCM-SHA384"])
def test_tls12_suite_is_the_clients_first(policy: str, first: str,
                                          certificate: LoadedCertificate) -> None:
    suites = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
              "ECDHE-ECDSA-CHACHA20-POLY1305"]
    suites.remove(first)
    client_ctx = client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=":".join([first, *suites]))
    client, _ = handshake(client_ctx, _serving(policy, certificate), "policy.example.com")
    assert cipher_name(client) == first


def test_legacy_suites_exactly() -> None:
    """docs/tls.md lists these; static-RSA key exchange included, like Mozilla's "old"."""
    names = [cipher["name"] for cipher in policy_context("legacy").get_ciphers()
             if cipher["protocol"] != "TLSv1.3"]
    assert sorted(names) == sorted([
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
        "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384",
        "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA",
    ])


def test_intermediate_ciphers_are_ecdhe_aead_only() -> None:
    ciphers = policy_context("intermediate").get_ciphers()
    tls12 = [cipher for cipher in ciphers if cipher["protocol"] == "TLSv1.2"]
    tls13 = {cipher["name"] for cipher in ciphers if cipher["protocol"] == "TLSv1.3"}
    assert tls13 == TLS13_SUITES
    assert len(tls12) == 6
    assert {cipher["protocol"] for cipher in ciphers} == {"TLSv1.2", "TLSv1.3"}
    for cipher in tls12:
        name = cipher["name"]
        assert name.startswith("ECDHE-"), name
        assert cipher["kea"] == "kx-ecdhe", name
        assert cipher["aead"], name
        assert "GCM" in name or "CHACHA20" in name, name
        assert "CBC" not in cipher["description"], name
        assert not name.endswith("-SHA"), name  # no SHA-1 MAC
        assert "DHE-RSA" not in name.replace("ECDHE-RSA", ""), name
    assert {cipher["auth"] for cipher in tls12} == {"auth-ecdsa", "auth-rsa"}


def test_legacy_adds_cbc_suites() -> None:
    names = {cipher["name"] for cipher in policy_context("legacy").get_ciphers()}
    assert {"ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "AES128-SHA"} <= names
    assert {cipher["name"] for cipher in policy_context("intermediate").get_ciphers()} < names


def test_only_legacy_warns() -> None:
    assert "TLS 1.0" in POLICIES["legacy"].warning
    assert POLICIES["intermediate"].warning == ""
    assert POLICIES["modern"].warning == ""


def test_unknown_policy_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        policy_context("paranoid")


@pytest.mark.parametrize("policy", ALL)
def test_alpn_is_negotiated(policy: str, certificate: LoadedCertificate) -> None:
    context = _serving(policy, certificate, alpn=("h2", "http/1.1"))
    client, server = handshake(client_context(alpn=["http/1.1", "h2"]), context, "policy.example.com")
    # The server's order wins: h2 even though the client listed http/1.1 first.
    assert client.selected_alpn_protocol() == "h2"
    assert server.selected_alpn_protocol() == "h2"
    client, _ = handshake(client_context(alpn=["http/1.1"]), context, "policy.example.com")
    assert client.selected_alpn_protocol() == "http/1.1"


def test_no_alpn_by_default(certificate: LoadedCertificate) -> None:
    client, _ = handshake(client_context(alpn=["h2"]), _serving("intermediate", certificate),
                          "policy.example.com")
    assert client.selected_alpn_protocol() is None


# --- what clients get through -------------------------------------------------------------


def _tls11_client() -> ssl.SSLContext:
    return client_context(minimum=ssl.TLSVersion.TLSv1_1, maximum=ssl.TLSVersion.TLSv1_1,
                          ciphers="DEFAULT@SECLEVEL=0")


def _tls12_client() -> ssl.SSLContext:
    return client_context(maximum=ssl.TLSVersion.TLSv1_2)


@pytest.mark.parametrize("policy", ["intermediate", "modern"])
def test_tls11_client_is_refused(policy: str, certificate: LoadedCertificate) -> None:
    with pytest.raises(ssl.SSLError, match=VERSION_REFUSED):
        handshake(_tls11_client(), _serving(policy, certificate), "policy.example.com")


def test_tls11_client_is_accepted_by_legacy(certificate: LoadedCertificate) -> None:
    # Proves the TLS 1.1 client above works at all, so its refusals come from the policies.
    client, _ = handshake(_tls11_client(), _serving("legacy", certificate), "policy.example.com")
    assert client.version() == "TLSv1.1"


def test_tls12_client_is_refused_by_modern(certificate: LoadedCertificate) -> None:
    with pytest.raises(ssl.SSLError, match=VERSION_REFUSED):
        handshake(_tls12_client(), _serving("modern", certificate), "policy.example.com")


@pytest.mark.parametrize("policy", ["intermediate", "legacy"])
def test_tls12_client_is_accepted(policy: str, certificate: LoadedCertificate) -> None:
    client, _ = handshake(_tls12_client(), _serving(policy, certificate), "policy.example.com")
    assert client.version() == "TLSv1.2"
    assert cipher_name(client).startswith("ECDHE-ECDSA-")


@pytest.mark.parametrize("policy", ALL)
def test_default_client_gets_tls13(policy: str, certificate: LoadedCertificate) -> None:
    client, _ = handshake(client_context(), _serving(policy, certificate), "policy.example.com")
    assert client.version() == "TLSv1.3"


def test_intermediate_refuses_cbc_only_tls12_client(certificate: LoadedCertificate) -> None:
    client_ctx = client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(ssl.SSLError):
        handshake(client_ctx, _serving("intermediate", certificate), "policy.example.com")
    client, _ = handshake(client_context(maximum=ssl.TLSVersion.TLSv1_2,
                                         ciphers="ECDHE-ECDSA-AES128-SHA"),
                          _serving("legacy", certificate), "policy.example.com")
    assert cipher_name(client) == "ECDHE-ECDSA-AES128-SHA"
