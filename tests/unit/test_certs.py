"""Tests for offload.tls.certs: loading, checking and ordering certificates and keys."""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tls_helpers import (
    authority,
    client_context,
    custom_leaf,
    handshake,
    issued,
    leaf_der,
    served_leaf,
    write_bundle,
)

from offload.demo.pki import Authority, KeyType, cert_pem, key_pem
from offload.errors import CertificateError
from offload.tls.certs import KeyPolicy, load_certificate, load_into_context, load_source
from offload.tls.policy import server_context

NOW = dt.datetime.now(dt.UTC)


def _public(key: Any) -> bytes:
    der: bytes = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


# --- what a bundle may hold ---------------------------------------------------------------


def test_bundle_with_key_loads(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    loaded = load_certificate(str(write_bundle(tmp_path, "www.pem", leaf)))
    assert loaded.names == ("www.example.com",)
    assert loaded.source == str(tmp_path / "www.pem")
    assert _chain(loaded.chain_pem) == [leaf.certificate]
    assert _public(serialization.load_pem_private_key(loaded.key_pem, None)) == _public(leaf.key)
    assert loaded.warnings == ()
    assert loaded.issuer == authority().certificate.subject.rfc4514_string()
    assert loaded.subject == "CN=www.example.com"


def test_certificate_with_separate_key_file(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    (tmp_path / "www.crt").write_bytes(leaf.cert_chain())
    (tmp_path / "www.key").write_bytes(key_pem(leaf.key))
    loaded = load_certificate(str(tmp_path / "www.crt"), str(tmp_path / "www.key"))
    assert _chain(loaded.chain_pem) == [leaf.certificate]
    assert loaded.source == f"{tmp_path / 'www.crt'} + {tmp_path / 'www.key'}"


def test_key_file_overrides_a_key_in_the_bundle(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    other = issued(("other.example.com",))
    # The bundle carries a foreign key; the named key file is the one that counts.
    (tmp_path / "www.pem").write_bytes(leaf.cert_chain() + key_pem(other.key))
    (tmp_path / "www.key").write_bytes(key_pem(leaf.key))
    loaded = load_certificate(str(tmp_path / "www.pem"), str(tmp_path / "www.key"))
    assert loaded.names == ("www.example.com",)


def test_key_not_matching_is_refused(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    other = issued(("other.example.com",))
    (tmp_path / "www.crt").write_bytes(leaf.cert_chain())
    (tmp_path / "other.key").write_bytes(key_pem(other.key))
    with pytest.raises(CertificateError, match="does not match") as caught:
        load_certificate(str(tmp_path / "www.crt"), str(tmp_path / "other.key"))
    assert caught.value.path == str(tmp_path / "other.key")


def test_key_not_matching_in_bundle_is_refused(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    other = issued(("other.example.com",))
    (tmp_path / "mixed.pem").write_bytes(leaf.cert_chain() + key_pem(other.key))
    with pytest.raises(CertificateError, match="does not match"):
        load_certificate(str(tmp_path / "mixed.pem"))


def test_no_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "www.crt").write_bytes(issued(("www.example.com",)).cert_chain())
    with pytest.raises(CertificateError, match="no private key found") as caught:
        load_certificate(str(tmp_path / "www.crt"))
    assert caught.value.fix  # tells the user how to provide the key


def test_key_file_without_key_is_refused(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    (tmp_path / "www.crt").write_bytes(leaf.cert_chain())
    (tmp_path / "www.key").write_bytes(leaf.cert_chain())
    with pytest.raises(CertificateError, match="no private key found in the file") as caught:
        load_certificate(str(tmp_path / "www.crt"), str(tmp_path / "www.key"))
    assert caught.value.path == str(tmp_path / "www.key")


def test_two_keys_are_refused(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    other = issued(("other.example.com",))
    (tmp_path / "two.pem").write_bytes(leaf.bundle() + key_pem(other.key))
    with pytest.raises(CertificateError, match="more than one private key"):
        load_certificate(str(tmp_path / "two.pem"))


def test_two_keys_of_different_pem_kinds_are_refused(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    traditional = leaf.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
    assert b"BEGIN EC PRIVATE KEY" in traditional
    (tmp_path / "two.pem").write_bytes(leaf.bundle() + traditional)
    with pytest.raises(CertificateError, match="more than one private key"):
        load_certificate(str(tmp_path / "two.pem"))


def test_traditional_rsa_key_format_loads(tmp_path: Path) -> None:
    leaf = issued(("rsa.example.com",), "rsa")
    traditional = leaf.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
    assert b"BEGIN RSA PRIVATE KEY" in traditional
    (tmp_path / "rsa.pem").write_bytes(leaf.cert_chain() + traditional)
    loaded = load_certificate(str(tmp_path / "rsa.pem"))
    assert loaded.key_type == "RSA"
    # Whatever the input format, the key comes out as PKCS#8.
    assert loaded.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_no_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(key_pem(issued(("www.example.com",)).key))
    with pytest.raises(CertificateError, match="no certificate found"):
        load_certificate(str(tmp_path / "key.pem"))


def test_text_without_pem_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.pem").write_bytes(b"this is not a certificate\n")
    with pytest.raises(CertificateError, match="no certificate found"):
        load_certificate(str(tmp_path / "notes.pem"))


def test_garbage_pem_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match="not a valid PEM file"):
        load_certificate(str(tmp_path / "bad.pem"))


def test_garbage_key_is_refused(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    (tmp_path / "bad.pem").write_bytes(
        leaf.cert_chain()
        + b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CertificateError, match="private key cannot be read"):
        load_certificate(str(tmp_path / "bad.pem"))


def test_garbage_certificate_in_key_file_is_a_certificate_error(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    (tmp_path / "www.crt").write_bytes(leaf.cert_chain())
    (tmp_path / "www.key").write_bytes(
        key_pem(leaf.key)
        + b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match=r"www\.key: not a valid PEM file"):
        load_certificate(str(tmp_path / "www.crt"), str(tmp_path / "www.key"))


def test_encrypted_key_is_refused_with_advice(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    encrypted = leaf.key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret"))
    (tmp_path / "www.pem").write_bytes(leaf.cert_chain() + encrypted)
    with pytest.raises(CertificateError, match="encrypted and no passphrase") as caught:
        load_certificate(str(tmp_path / "www.pem"))
    assert "passphrase_file or passphrase_env" in caught.value.fix


def test_encrypted_key_loads_with_its_passphrase(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    for label, encryption in (
        ("pkcs8", serialization.PrivateFormat.PKCS8),
        ("traditional", serialization.PrivateFormat.TraditionalOpenSSL),
    ):
        encrypted = leaf.key.private_bytes(serialization.Encoding.PEM, encryption,
                                           serialization.BestAvailableEncryption(b"secret"))
        path = tmp_path / f"{label}.pem"
        path.write_bytes(leaf.cert_chain() + encrypted)
        loaded = load_certificate(str(path), policy=KeyPolicy(passphrase=b"secret"))
        assert loaded.names == ("www.example.com",)
        assert b"ENCRYPTED" not in loaded.key_pem  # held decrypted, in memory only
        with pytest.raises(CertificateError, match="wrong passphrase"):
            load_certificate(str(path), policy=KeyPolicy(passphrase=b"not it"))


def test_a_passphrase_does_not_hurt_an_unencrypted_key(tmp_path: Path) -> None:
    path = write_bundle(tmp_path, "plain.pem", issued(("www.example.com",)))
    assert load_certificate(str(path), policy=KeyPolicy(passphrase=b"x")).names


@pytest.mark.parametrize(("mode", "who"), [(0o640, "group"), (0o604, "others"),
                                           (0o644, "group and others")])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    path = write_bundle(tmp_path, "site.pem", issued(("www.example.com",)))
    path.chmod(mode)
    with pytest.raises(CertificateError, match=f"readable by {who}") as caught:
        load_certificate(str(path))
    assert f"chmod 600 {path}" in caught.value.fix
    assert "allow_readable_keys" in caught.value.fix
    assert load_certificate(str(path), policy=KeyPolicy(allow_readable=True)).names


def test_separate_key_file_mode_is_what_counts(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    (tmp_path / "www.crt").write_bytes(leaf.cert_chain())
    (tmp_path / "www.crt").chmod(0o644)  # certificates are public
    key = tmp_path / "www.key"
    key.write_bytes(key_pem(leaf.key))
    assert load_certificate(str(tmp_path / "www.crt"), str(key)).names
    key.chmod(0o644)
    with pytest.raises(CertificateError, match="readable by group and others"):
        load_certificate(str(tmp_path / "www.crt"), str(key))


def test_keys_and_passphrases_never_show_in_a_repr(tmp_path: Path) -> None:
    path = write_bundle(tmp_path, "site.pem", issued(("www.example.com",)))
    loaded = load_certificate(str(path))
    assert "PRIVATE KEY" not in repr(loaded)
    assert loaded.key_pem.decode() not in repr(loaded)
    assert "hunter2" not in repr(KeyPolicy(passphrase=b"hunter2"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="certificate file not found") as caught:
        load_certificate(str(tmp_path / "absent.pem"))
    assert caught.value.path == str(tmp_path / "absent.pem")


def test_missing_key_file(tmp_path: Path) -> None:
    (tmp_path / "www.crt").write_bytes(issued(("www.example.com",)).cert_chain())
    with pytest.raises(CertificateError, match="key file not found"):
        load_certificate(str(tmp_path / "www.crt"), str(tmp_path / "absent.key"))


def test_directory_where_a_file_is_expected(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="found a directory"):
        load_certificate(str(tmp_path))


def test_directory_where_a_key_file_is_expected(tmp_path: Path) -> None:
    (tmp_path / "www.crt").write_bytes(issued(("www.example.com",)).cert_chain())
    (tmp_path / "keys").mkdir()
    with pytest.raises(CertificateError, match="expected a key file, found a directory"):
        load_certificate(str(tmp_path / "www.crt"), str(tmp_path / "keys"))


# --- chain order --------------------------------------------------------------------------


def test_scrambled_chain_is_put_in_order(tmp_path: Path) -> None:
    root = Authority("scramble root")
    intermediate = root.intermediate("scramble intermediate")
    leaf = intermediate.issue(["chain.example.com"])
    (tmp_path / "chain.pem").write_bytes(
        cert_pem(intermediate.certificate) + key_pem(leaf.key) + root.pem()
        + cert_pem(leaf.certificate))
    loaded = load_certificate(str(tmp_path / "chain.pem"))
    assert _chain(loaded.chain_pem) == [leaf.certificate, intermediate.certificate, root.certificate]
    assert loaded.warnings == ()


def test_two_intermediates_are_ordered(tmp_path: Path) -> None:
    root = Authority("deep root")
    upper = root.intermediate("upper intermediate")
    # Authority.intermediate() sets path_length=0; for ordering only the signatures matter.
    lower = upper.intermediate("lower intermediate")
    leaf = lower.issue(["deep.example.com"])
    (tmp_path / "deep.pem").write_bytes(
        root.pem() + cert_pem(upper.certificate) + cert_pem(leaf.certificate)
        + cert_pem(lower.certificate) + key_pem(leaf.key))
    loaded = load_certificate(str(tmp_path / "deep.pem"))
    assert _chain(loaded.chain_pem) == [leaf.certificate, lower.certificate, upper.certificate,
                                        root.certificate]


def test_unrelated_certificate_warns_and_is_not_served(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    stranger = Authority("unrelated CA")
    (tmp_path / "www.pem").write_bytes(leaf.cert_chain() + stranger.pem() + key_pem(leaf.key))
    loaded = load_certificate(str(tmp_path / "www.pem"))
    assert _chain(loaded.chain_pem) == [leaf.certificate]
    assert len(loaded.warnings) == 1
    assert "1 certificate(s)" in loaded.warnings[0]
    assert "not part of the leaf's chain" in loaded.warnings[0]


def test_look_alike_issuer_with_other_key_is_not_chained(tmp_path: Path) -> None:
    # Same subject as the real CA, different key: the signature check must reject it.
    leaf = issued(("www.example.com",))
    impostor = Authority("offload test CA")
    assert impostor.certificate.subject == authority().certificate.subject
    (tmp_path / "www.pem").write_bytes(leaf.bundle() + impostor.pem())
    loaded = load_certificate(str(tmp_path / "www.pem"))
    assert _chain(loaded.chain_pem) == [leaf.certificate]
    assert len(loaded.warnings) == 1


# --- validity -----------------------------------------------------------------------------


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    leaf = authority().issue(["old.example.com"], not_before=NOW - dt.timedelta(days=400),
                             not_after=NOW - dt.timedelta(days=1))
    with pytest.raises(CertificateError, match="expired") as caught:
        load_certificate(str(write_bundle(tmp_path, "old.pem", leaf)))
    assert f"{(NOW - dt.timedelta(days=1)):%Y-%m-%d}" in caught.value.reason


def test_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    leaf = authority().issue(["new.example.com"], not_before=NOW + dt.timedelta(days=2),
                             not_after=NOW + dt.timedelta(days=90))
    with pytest.raises(CertificateError, match="not valid before"):
        load_certificate(str(write_bundle(tmp_path, "new.pem", leaf)))


def test_now_parameter_decides_validity(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    path = str(write_bundle(tmp_path, "www.pem", leaf))
    with pytest.raises(CertificateError, match="expired"):
        load_certificate(path, now=NOW + dt.timedelta(days=365))
    with pytest.raises(CertificateError, match="not valid before"):
        load_certificate(path, now=NOW - dt.timedelta(days=1))


def test_expiring_soon_loads_with_warning(tmp_path: Path) -> None:
    leaf = authority().issue(["soon.example.com"], days=10)
    loaded = load_certificate(str(write_bundle(tmp_path, "soon.pem", leaf)))
    assert len(loaded.warnings) == 1
    assert "expires in" in loaded.warnings[0]
    assert "expires in 9 day(s)" in loaded.warnings[0] or "expires in 10 day(s)" in loaded.warnings[0]
    assert 9 <= loaded.days_left(dt.datetime.now(dt.UTC)) <= 10


def test_not_expiring_soon_has_no_warning(tmp_path: Path) -> None:
    leaf = authority().issue(["later.example.com"], days=45)
    loaded = load_certificate(str(write_bundle(tmp_path, "later.pem", leaf)))
    assert loaded.warnings == ()


# --- what the certificate describes -------------------------------------------------------


def test_names_from_san_are_normalised(tmp_path: Path) -> None:
    leaf = authority().issue(["WWW.Example.COM", "www.example.com.", "api.example.com",
                              "*.Example.com", "127.0.0.1"])
    loaded = load_certificate(str(write_bundle(tmp_path, "n.pem", leaf)))
    assert loaded.names == ("www.example.com", "api.example.com", "*.example.com")


def test_common_name_ignored_when_san_has_dns_names(tmp_path: Path) -> None:
    leaf = custom_leaf(authority(), "cn-only.example.com", ["san.example.com"])
    loaded = load_certificate(str(write_bundle(tmp_path, "c.pem", leaf)))
    assert loaded.names == ("san.example.com",)


def test_common_name_used_without_san(tmp_path: Path) -> None:
    leaf = custom_leaf(authority(), "Legacy.Example.com.", [])
    with pytest.raises(x509.ExtensionNotFound):
        leaf.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    loaded = load_certificate(str(write_bundle(tmp_path, "c.pem", leaf)))
    assert loaded.names == ("legacy.example.com",)


def test_ecdsa_key_kind_and_fingerprint(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    loaded = load_certificate(str(write_bundle(tmp_path, "e.pem", leaf)))
    assert (loaded.key_type, loaded.key_bits) == ("ECDSA", 256)
    assert loaded.fingerprint == hashlib.sha256(leaf_der(leaf)).hexdigest()
    assert "[ECDSA 256]" in loaded.describe()


def test_rsa_key_kind_and_fingerprint(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",), "rsa")
    loaded = load_certificate(str(write_bundle(tmp_path, "r.pem", leaf)))
    assert (loaded.key_type, loaded.key_bits) == ("RSA", 2048)
    assert loaded.fingerprint == hashlib.sha256(leaf_der(leaf)).hexdigest()


def test_validity_dates_are_the_leaf_ones(tmp_path: Path) -> None:
    root = Authority("dates root")
    leaf = root.intermediate().issue(["d.example.com"], days=60)
    loaded = load_certificate(str(write_bundle(tmp_path, "d.pem", leaf)))
    assert loaded.not_before == leaf.certificate.not_valid_before_utc
    assert loaded.not_after == leaf.certificate.not_valid_after_utc


# --- directories --------------------------------------------------------------------------


def test_directory_of_bundles_and_pairs(tmp_path: Path) -> None:
    b_leaf = issued(("b.example.com",))
    a_leaf = issued(("a.example.com",), "rsa")
    c_leaf = issued(("c.example.com",))
    write_bundle(tmp_path, "b.pem", b_leaf)
    (tmp_path / "a.crt").write_bytes(a_leaf.cert_chain())
    (tmp_path / "a.key").write_bytes(key_pem(a_leaf.key))
    write_bundle(tmp_path, "c.cer", c_leaf)
    # Ignored: hidden files, other suffixes, sub-directories.
    write_bundle(tmp_path, ".hidden.pem", issued(("hidden.example.com",)))
    write_bundle(tmp_path, "notes.txt", issued(("txt.example.com",)))
    write_bundle(tmp_path, "backup.pem.bak", issued(("bak.example.com",)))
    (tmp_path / "sub.pem").mkdir()
    loaded = load_source(str(tmp_path))
    assert [certificate.names for certificate in loaded] == [
        ("a.example.com",), ("b.example.com",), ("c.example.com",)]
    assert loaded[0].source == f"{tmp_path / 'a.crt'} + {tmp_path / 'a.key'}"
    assert loaded[0].key_type == "RSA"
    assert loaded[1].source == str(tmp_path / "b.pem")


def test_directory_order_is_sorted_by_file_name(tmp_path: Path) -> None:
    for index, name in enumerate(["zeta", "alpha", "mid"]):
        write_bundle(tmp_path, f"{name}.pem", issued((f"n{index}.example.com",)))
    loaded = load_source(str(tmp_path))
    assert [Path(certificate.source).name for certificate in loaded] == [
        "alpha.pem", "mid.pem", "zeta.pem"]


def test_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("certificates go here\n")
    with pytest.raises(CertificateError, match="holds no certificate files"):
        load_source(str(tmp_path))


def test_key_with_a_directory_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path, "www.pem", issued(("www.example.com",)))
    with pytest.raises(CertificateError, match="key file cannot be given for a directory"):
        load_source(str(tmp_path), str(tmp_path / "www.key"))


def test_bad_bundle_in_directory_fails_the_load(tmp_path: Path) -> None:
    write_bundle(tmp_path, "good.pem", issued(("www.example.com",)))
    (tmp_path / "bad.pem").write_bytes(issued(("bad.example.com",)).cert_chain())
    with pytest.raises(CertificateError, match="no private key") as caught:
        load_source(str(tmp_path))
    assert caught.value.path == str(tmp_path / "bad.pem")


def test_load_source_single_file_with_key(tmp_path: Path) -> None:
    leaf = issued(("www.example.com",))
    (tmp_path / "www.crt").write_bytes(leaf.cert_chain())
    (tmp_path / "www.key").write_bytes(key_pem(leaf.key))
    loaded = load_source(str(tmp_path / "www.crt"), str(tmp_path / "www.key"))
    assert len(loaded) == 1
    assert loaded[0].names == ("www.example.com",)


# --- into an SSL context ------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_load_into_context_serves_a_handshake(tmp_path: Path, key_type: KeyType) -> None:
    root = Authority("handshake root")
    intermediate = root.intermediate("handshake intermediate")
    leaf = intermediate.issue(["hs.example.com"], key_type)
    loaded = load_certificate(str(write_bundle(tmp_path, "hs.pem", leaf)))
    context = server_context("intermediate")
    load_into_context(context, loaded)
    # The client trusts only the root, so the intermediate must be served from chain_pem.
    client, _ = handshake(client_context(root.pem()), context, "hs.example.com")
    assert served_leaf(client) == leaf_der(leaf)
    peer = client.getpeercert()
    assert peer is not None
    assert peer["subject"] == ((("commonName", "hs.example.com"),),)


def test_handshake_fails_for_wrong_host_name(tmp_path: Path) -> None:
    loaded = load_certificate(str(write_bundle(tmp_path, "w.pem", issued(("www.example.com",)))))
    context = server_context("intermediate")
    load_into_context(context, loaded)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client_context(authority().pem()), context, "other.example.com")
