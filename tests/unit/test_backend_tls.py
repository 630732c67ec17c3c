"""TLS to the backends, without sockets: settings, the choice of SNI and of the name checked,
certificate names, failure reasons, sessions, and the configuration's checks."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from offload.config.loader import validate
from offload.config.model import BackendConfig
from offload.config.quick import QuickOptions, flag_for, raw_config
from offload.demo.pki import Authority, write_private
from offload.errors import ConfigError
from offload.tls.backend_tls import (
    MAX_SESSIONS,
    ServerTls,
    TlsClient,
    TlsSettings,
    certificate_matches,
    classify_failure,
    effective_settings,
    sni_from_host,
)
from offload.tls.certs import load_certificate
from offload.tls.keys import new_key


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority("unit test CA")


def der(authority: Authority, names: list[str]) -> bytes:
    return authority.issue(names).certificate.public_bytes(Encoding.DER)


@pytest.mark.parametrize(("host", "sni"), [
    (b"app.test", "app.test"),
    (b"App.Test:8443", "app.test"),
    (b"app.test.", "app.test"),
    (b"[::1]:8443", None),
    (b"10.0.0.5:443", None),
    (b"10.0.0.5", None),
    (b"", None),
    (b"1.2.3.example", "1.2.3.example"),
])
def test_the_sni_of_a_request_is_its_host_without_port_and_never_an_address(host, sni):
    assert sni_from_host(host) == sni


@given(st.binary(max_size=64))
def test_any_host_gives_a_name_or_none(host: bytes) -> None:
    sni = sni_from_host(host)
    assert sni is None or (sni and ":" not in sni and sni == sni.lower())


@pytest.mark.parametrize(("names", "wanted", "matches"), [
    (["app.test"], "app.test", True),
    (["app.test"], "other.test", False),
    (["*.example.test"], "a.example.test", True),
    (["*.example.test"], "example.test", False),
    (["*.example.test"], "a.b.example.test", False),
    (["*.test"], "a.test", False),  # a wildcard over a whole top-level name never matches
    (["a*.example.test"], "ab.example.test", False),  # no partial wildcards
    (["10.0.0.5"], "10.0.0.5", True),
    (["10.0.0.5"], "10.0.0.6", False),
    (["app.test"], "10.0.0.5", False),
    (["10.0.0.5"], "app.test", False),
])
def test_certificate_names_are_matched_by_subject_alt_name(authority, names, wanted, matches):
    assert certificate_matches(der(authority, names), wanted) is matches


def test_a_common_name_alone_is_not_a_match(authority):
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.test")]))
                   .issuer_name(authority.certificate.subject).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now)
                   .sign(authority.key, hashes.SHA256()))
    assert not certificate_matches(certificate.public_bytes(Encoding.DER), "app.test")


def _client(**settings: Any) -> TlsClient:
    return TlsClient(TlsSettings(**settings), ("http/1.1",), None)


def test_the_sni_is_checked_by_openssl_when_it_is_the_name_to_verify():
    tls = ServerTls(_client(), "10.0.0.5")
    plan = tls.handshake(tls.sni(b"app.test:443"))
    assert plan.context is tls.client.named and plan.context.check_hostname
    assert plan.server_hostname == "app.test" and plan.check_after is None


def test_without_sni_an_address_is_checked_by_openssl_and_a_name_by_offload():
    by_address = ServerTls(_client(sni="none"), "10.0.0.5")
    plan = by_address.handshake(by_address.sni(b"app.test"))
    assert plan.server_hostname == "10.0.0.5" and plan.context is by_address.client.named
    by_name = ServerTls(_client(sni="none"), "backend.internal")
    plan = by_name.handshake(None)
    assert plan.server_hostname is None, "no SNI goes out"
    assert plan.check_after == "backend.internal"
    assert plan.context is by_name.client.unnamed
    assert plan.context.verify_mode == ssl.CERT_REQUIRED, "the chain is still verified"


def test_verify_name_differs_from_the_sni():
    tls = ServerTls(_client(verify_name="backend.internal"), "10.0.0.5")
    plan = tls.handshake(tls.sni(b"www.example.test"))
    assert plan.server_hostname == "www.example.test"
    assert plan.check_after == "backend.internal"


def test_verify_false_checks_nothing():
    tls = ServerTls(_client(verify=False), "10.0.0.5")
    plan = tls.handshake("app.test")
    assert plan.context.verify_mode == ssl.CERT_NONE and plan.check_after is None


def test_the_sni_setting():
    assert ServerTls(_client(sni="fixed.test"), "").sni(b"other.test") == "fixed.test"
    assert ServerTls(_client(sni="none"), "").sni(b"other.test") is None
    auto = ServerTls(_client(), "")
    assert auto.sni(b"Other.Test:8443") == "other.test"
    assert auto.sni("Client.SNI.test") == "client.sni.test", "TCP mode: the client's SNI"
    assert auto.sni(None) is None


def test_the_policy_applies_to_the_backend_side():
    assert _client().named.minimum_version == ssl.TLSVersion.TLSv1_2
    assert _client(tls_policy="modern").named.minimum_version == ssl.TLSVersion.TLSv1_3


def test_sessions_are_kept_per_sni_and_bounded():
    tls = ServerTls(_client(), "")
    for index in range(MAX_SESSIONS + 10):
        tls.keep_session((f"h{index}.test", 0), object())  # type: ignore[arg-type]
    assert len(tls.sessions) == MAX_SESSIONS
    assert ("h0.test", 0) not in tls.sessions, "the oldest SNI went first"
    assert (f"h{MAX_SESSIONS + 9}.test", 0) in tls.sessions


def test_a_new_client_certificate_changes_the_pool_key(tmp_path: Path, authority):
    bundle = tmp_path / "client.pem"
    write_private(bundle, authority.issue(["proxy"], client=True).bundle())
    client = _client()
    tls = ServerTls(client, "")
    before = tls.handshake("app.test").key
    assert tls.pool_key(b"App.Test:443") == before
    tls.keep_session(before, object())  # type: ignore[arg-type]
    client.replace_certificate(load_certificate(str(bundle)))
    tls.forget_sessions()
    assert tls.handshake("app.test").key != before
    assert tls.pool_key(b"App.Test:443") == tls.handshake("app.test").key, \
        "a remembered pool key is not reused across a certificate change"
    assert tls.sessions == {}


def test_the_pool_key_of_a_host_is_its_handshake_key():
    for sni in ("auto", "none", "fixed.test"):
        tls = ServerTls(_client(sni=sni), "10.0.0.5")
        for host in (b"app.test", b"APP.test.:8443", b"10.0.0.9", b"[::1]:443", b""):
            assert tls.pool_key(host) == tls.handshake(tls.sni(host)).key
            assert tls.pool_key(host) == tls.handshake(tls.sni(host)).key  # remembered


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    return error


@pytest.mark.parametrize(("error", "reason"), [
    (_verify_error(10), "expired"),
    (_verify_error(20), "unknown_ca"),
    (_verify_error(19), "unknown_ca"),
    (_verify_error(62), "name_mismatch"),
    (_verify_error(999), "bad_certificate"),
    (ssl.SSLEOFError(8, "EOF"), "closed_in_handshake"),
    (ConnectionResetError(), "closed_in_handshake"),
])
def test_failures_are_named_by_the_check_that_failed(error, reason):
    assert classify_failure(error) == reason


def _backend(**keys: Any) -> dict[str, Any]:
    return {"name": "app", "servers": ["127.0.0.1:9443"], **keys}


def _issues(backend: dict[str, Any]) -> list[str]:
    raw = {"frontends": [{"name": "web", "bind": ":8443", "backend": "app",
                          "certificates": "site.pem"}], "backends": [backend]}
    try:
        validate(raw, "test.toml")
    except ConfigError as error:
        return [f"{issue.where}: {issue.what}" for issue in error.issues]
    return []


def test_tls_keys_without_tls_are_refused():
    assert _issues(_backend(ca="ca.pem")) == [
        "backends[0].ca: ca is set but no server of this backend uses TLS"]
    assert _issues(_backend(servers=[{"address": "127.0.0.1:1", "sni": "a.test"}])) == [
        "backends[0].servers[0].sni: sni is set but this server does not use TLS"]
    assert _issues(_backend(tls=True, ca="ca.pem")) == []
    assert _issues(_backend(servers=[{"address": "127.0.0.1:1", "tls": True,
                                      "verify_name": "a.test"}])) == []


def test_contradictions_are_refused():
    assert _issues(_backend(tls=True, verify=False, ca="ca.pem")) == [
        "backends[0].ca: ca is set but verify = false: nothing is checked against it"]
    assert _issues(_backend(tls=True, servers=["unix:/run/app.sock"])) == [
        "backends[0].servers[0].address: TLS to a Unix socket is not supported"]
    # a backend-wide CA with one server that opts out of verification is fine
    assert _issues(_backend(tls=True, ca="ca.pem", servers=[
        "127.0.0.1:1", {"address": "127.0.0.1:2", "verify": False}])) == []


@pytest.mark.parametrize(("sni", "words"), [
    ("10.0.0.5", "an IP address is never sent as SNI"),
    ("not a name", "is not a DNS name"),
])
def test_bad_sni_values_are_explained(sni, words):
    (issue,) = _issues(_backend(tls=True, sni=sni))
    assert issue.startswith("backends[0].sni: ") and words in issue


def test_server_keys_override_the_backends():
    backend = BackendConfig.model_validate(_backend(
        tls=True, ca=["a.pem"], sni="none", servers=[
            "127.0.0.1:1", {"address": "127.0.0.1:2", "sni": "auto", "verify": False},
            {"address": "127.0.0.1:3", "tls": False}]))
    first, second, third = (effective_settings(backend, server) for server in backend.servers)
    assert first == TlsSettings(ca=("a.pem",), sni="none")
    assert second == TlsSettings(verify=False, ca=("a.pem",), sni="auto")
    assert third is None


def test_quick_mode_backend_tls_flags():
    options = QuickOptions(listen=":8443", certs=("site.pem",), backends=("127.0.0.1:8443",),
                           backend_tls=True, backend_ca=("ca.pem",))
    backend = raw_config(options)["backends"][0]
    assert backend["tls"] is True and backend["ca"] == ["ca.pem"]
    assert flag_for("backends[0].ca[0]") == "--backend-ca"
    assert flag_for("backends[0].tls") == "--backend-tls"
