"""Client-certificate pieces without sockets: identity fields, Host against SNI, loading."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from tls_helpers import authority

from offload.config.model import FrontendConfig
from offload.tls.client_certs import host_matches_sni, identity_fields, load_client_auth

NOW = dt.datetime.now(dt.UTC)


def _frontend(**keys: object) -> FrontendConfig:
    return FrontendConfig.model_validate({"name": "web", "bind": "127.0.0.1:8443",
                                          "backend": "app", **keys})


@pytest.mark.parametrize(("host", "sni", "ok"), [
    (b"example.com", "example.com", True),
    (b"EXAMPLE.com:8443", "example.com", True),
    (b"example.com.", "Example.COM", True),
    (b"other.example.com", "example.com", False),
    (b"example.com.evil.test", "example.com", False),
    (b"", "example.com", False),
    (b"192.0.2.1", None, True),
    (b"[2001:db8::1]:443", None, True),
    (b"example.com", None, False),
    (b"[2001:db8::1]", "example.com", False),
])
def test_host_must_name_the_verified_server(host: bytes, sni: str | None, ok: bool) -> None:
    assert host_matches_sni(host, sni) is ok


def test_no_certificate_is_said_as_none() -> None:
    assert identity_fields(None) == [(b"X-SSL-Client-Verify", b"NONE")]


@given(st.text(min_size=1, max_size=16))
def test_a_hostile_subject_cannot_break_a_header_line(common_name: str) -> None:
    key = authority().key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(1)
                   .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    fields = identity_fields(certificate.public_bytes(Encoding.DER))
    assert len(fields) == 4
    for name, value in fields:
        assert all(0x20 <= byte <= 0x7E for byte in name + value), (name, value)


def test_loading_names_each_unreadable_or_wrong_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(authority().pem())
    (tmp_path / "not-a-crl.pem").write_bytes(authority().pem())
    frontend = _frontend(client_auth="required", client_ca=["ca.pem", "missing.pem"],
                         client_crl=["not-a-crl.pem"])
    auth, issues, _ = load_client_auth(frontend, tmp_path, "frontends[0]", NOW)
    assert auth is None
    assert [issue.where for issue in issues] == ["frontends[0].client_ca[1]",
                                                 "frontends[0].client_crl[0]"]
    assert "cannot read" in issues[0].what
    assert "openssl crl -inform DER" in issues[1].fix


def test_a_stale_crl_is_warned_about(tmp_path: Path) -> None:
    ca = authority()
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject)
           .last_update(NOW - dt.timedelta(days=10)).next_update(NOW - dt.timedelta(days=3))
           .sign(ca.key, hashes.SHA256()))
    (tmp_path / "old.crl").write_bytes(crl.public_bytes(Encoding.PEM))
    frontend = _frontend(client_auth="optional", client_ca="ca.pem", client_crl="old.crl")
    auth, issues, warnings = load_client_auth(frontend, tmp_path, "frontends[0]", NOW)
    assert auth is not None and not auth.required and not issues
    assert auth.crl_files == (str(tmp_path / "old.crl"),)
    assert len(warnings) == 1 and "out of date" in warnings[0]
