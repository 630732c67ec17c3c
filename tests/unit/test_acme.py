"""ACME pieces without a CA: renewal schedule, backoff, storage, TLS-ALPN-01 certificates."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from tls_helpers import authority, handshake

from offload.acme.alpn import (
    ACME_TLS_ALPN,
    ID_PE_ACME_IDENTIFIER,
    ChallengeContexts,
    validation_bundle,
)
from offload.acme.schedule import BACKOFF_MAX, Backoff, covers, next_attempt, renewal_time
from offload.acme.storage import AcmeStorage, replace_private

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def _certificate(names: list[str], start: dt.datetime, days: int) -> x509.Certificate:
    return authority().issue(names, not_before=start, not_after=start + dt.timedelta(days=days)
                             ).certificate


# --- schedule -------------------------------------------------------------------------------


def test_renewal_is_due_when_a_third_of_the_lifetime_remains() -> None:
    certificate = _certificate(["a.example.com"], NOW, 90)
    assert renewal_time(certificate, 0.0) == NOW + dt.timedelta(days=60)
    assert renewal_time(certificate, 0.999) > NOW + dt.timedelta(days=55, hours=12)


@given(st.floats(min_value=0, max_value=1, exclude_max=True), st.integers(1, 400))
def test_jitter_only_moves_renewal_earlier_by_at_most_five_percent(jitter: float,
                                                                   days: int) -> None:
    lifetime = dt.timedelta(days=days)
    not_before = NOW
    not_after = NOW + lifetime
    certificate = _certificate(["a.example.com"], not_before, days)
    when = renewal_time(certificate, jitter)
    latest = not_after - lifetime / 3
    assert latest - lifetime * 0.05 <= when <= latest


def test_next_attempt_is_now_for_a_missing_or_incomplete_certificate() -> None:
    certificate = _certificate(["a.example.com"], NOW - dt.timedelta(days=1), 90)
    names = ("a.example.com", "www.a.example.com")
    assert next_attempt(None, names, 0.5, NOW) == NOW
    assert not covers(certificate, names)
    assert next_attempt(certificate, names, 0.5, NOW) == NOW, "a name was added to the config"
    assert next_attempt(certificate, ("a.example.com",), 0.0, NOW) == (
        NOW - dt.timedelta(days=1) + dt.timedelta(days=60))


def test_an_overdue_certificate_is_renewed_now() -> None:
    certificate = _certificate(["a.example.com"], NOW - dt.timedelta(days=80), 90)
    assert next_attempt(certificate, ("a.example.com",), 0.3, NOW) == NOW


def test_backoff_doubles_up_to_a_day_and_resets() -> None:
    backoff = Backoff(dt.timedelta(seconds=60))
    delays = [backoff.failed() for _ in range(14)]
    assert delays[:4] == [dt.timedelta(seconds=s) for s in (60, 120, 240, 480)]
    assert delays[-1] == BACKOFF_MAX
    assert all(a <= b for a, b in itertools.pairwise(delays))
    backoff.succeeded()
    assert backoff.failed() == dt.timedelta(seconds=60)


# --- storage --------------------------------------------------------------------------------


def test_storage_files_are_private_and_replaced_whole(tmp_path: Path) -> None:
    storage = AcmeStorage(tmp_path / "acme")
    storage.create()
    assert stat.S_IMODE(storage.root.stat().st_mode) == 0o700
    path = storage.certificate(("a.example.com", "b.example.com"))
    assert path == storage.certificates / "a.example.com.pem"
    old = os.umask(0o022)
    try:
        replace_private(path, b"one")
        replace_private(path, b"two")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in storage.certificates.iterdir()) == ["a.example.com.pem"]


def test_http01_answers_pending_tokens_only(tmp_path: Path) -> None:
    storage = AcmeStorage(tmp_path / "acme")
    storage.create()
    storage.put_http01("tok_en-1", "tok_en-1.thumb")
    assert storage.http01("tok_en-1") == b"tok_en-1.thumb"
    assert storage.http01("other") is None
    (storage.root / "secret").write_text("x")
    for hostile in ("../../secret", "..", "", "a/b", "tok en", "%2e%2e"):
        assert storage.http01(hostile) is None
    storage.remove_http01("tok_en-1")
    assert storage.http01("tok_en-1") is None


def test_tls_alpn01_lookup_refuses_names_outside_the_directory(tmp_path: Path) -> None:
    storage = AcmeStorage(tmp_path / "acme")
    storage.create()
    storage.put_tls_alpn01("a.example.com", b"bundle")
    assert storage.tls_alpn01("A.Example.COM") is not None
    for hostile in ("../a.example.com", "..", "a/../../x", "", "a example"):
        assert storage.tls_alpn01(hostile) is None


# --- TLS-ALPN-01 ------------------------------------------------------------------------------


def test_validation_certificate_carries_the_key_authorization_digest() -> None:
    bundle = validation_bundle("a.example.com", "token.thumbprint")
    certificate = x509.load_pem_x509_certificate(bundle)
    extension = certificate.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert extension.critical
    digest = hashlib.sha256(b"token.thumbprint").digest()
    assert extension.value.public_bytes() == b"\x04\x20" + digest
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["a.example.com"]


def test_challenge_context_answers_acme_tls_1_with_the_validation_certificate(
        tmp_path: Path) -> None:
    storage = AcmeStorage(tmp_path / "acme")
    storage.create()
    contexts = ChallengeContexts(storage)
    assert contexts.lookup("a.example.com") is None
    assert contexts.lookup(None) is None
    storage.put_tls_alpn01("a.example.com", validation_bundle("a.example.com", "t.k"))
    context = contexts.lookup("a.example.com")
    assert context is not None
    assert contexts.lookup("a.example.com") is context, "built once while the file stays"
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_alpn_protocols([ACME_TLS_ALPN])
    tls, _ = handshake(client, context, "a.example.com")
    assert tls.selected_alpn_protocol() == ACME_TLS_ALPN
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    served = x509.load_der_x509_certificate(der)
    assert served.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER).critical
    storage.remove_tls_alpn01("a.example.com")
    assert contexts.lookup("a.example.com") is None


@pytest.mark.parametrize("name", ["b.example.com", "../etc/passwd"])
def test_no_challenge_context_for_other_names(tmp_path: Path, name: str) -> None:
    storage = AcmeStorage(tmp_path / "acme")
    storage.create()
    storage.put_tls_alpn01("a.example.com", validation_bundle("a.example.com", "t.k"))
    assert ChallengeContexts(storage).lookup(name) is None
