"""Fetched CRLs without sockets: the URLs a certificate names, the checks on a fetched CRL, and
the cache's decision for a connection over time (an injected clock)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from offload.demo.pki import Authority, new_key
from offload.tls.ca_bundle import signer_id
from offload.tls.crl_cache import (
    FETCH,
    GOOD,
    REVOKED,
    UNAVAILABLE,
    UNCHECKED,
    CheckedCrl,
    ClientCert,
    CrlCache,
    CrlInvalid,
    FetchPolicy,
    check_crl,
    distribution_points,
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
T0 = NOW.timestamp()
URL = "http://crl.example.test/ca.crl"
MIRROR = "http://mirror.example.test/ca.crl"


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority("client CA")


def crl_of(ca: Authority, revoked: tuple[int, ...] = (), *, this: float = -3600,
           next_: float | None = 86400, key: object = None, number: int | None = 1,
           extensions: tuple[x509.ExtensionType, ...] = (), critical: bool = False,
           issuer: x509.Name | None = None) -> bytes:
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(issuer or ca.certificate.subject)
               .last_update(NOW + dt.timedelta(seconds=this)))
    if next_ is not None:
        builder = builder.next_update(NOW + dt.timedelta(seconds=next_))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(NOW - dt.timedelta(days=1)).build())
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=critical)
    crl = builder.sign(key or ca.key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(Encoding.DER)


# ------------------------------------------------------------------ distribution points


def _with_points(ca: Authority, points: list[x509.DistributionPoint]) -> x509.Certificate:
    key = new_key("ecdsa")
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
            .issuer_name(ca.certificate.subject).public_key(key.public_key())
            .serial_number(7).not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.CRLDistributionPoints(points), critical=False)
            .sign(ca.key, hashes.SHA256()))


def _uri(*urls: str) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(url) for url in urls]


def test_only_http_urls_of_complete_crls_are_fetched(ca: Authority) -> None:
    certificate = _with_points(ca, [
        x509.DistributionPoint(_uri("ldap://ldap.example.test/cn=CA", URL, "HTTPS://x.test/c",
                                    "HTTP://Mirror.example.test/ca.crl"), None, None, None),
        x509.DistributionPoint(_uri("http://by-reason.test/c.crl"), None,
                               frozenset({x509.ReasonFlags.key_compromise}), None),
        x509.DistributionPoint(_uri("http://indirect.test/c.crl"), None, None,
                               [x509.DirectoryName(ca.certificate.subject)]),
        x509.DistributionPoint(_uri(URL, "http://spaced.test/a b"), None, None, None),
    ])
    assert distribution_points(certificate) == (URL, "HTTP://Mirror.example.test/ca.crl")


def test_a_certificate_without_distribution_points_names_none(ca: Authority) -> None:
    assert distribution_points(ca.issue(["c"], client=True).certificate) == ()
    issued = ca.issue(["c"], client=True, crl_urls=(URL,))
    assert distribution_points(issued.certificate) == (URL,)


# ------------------------------------------------------------------ checks on a fetched CRL


def test_a_good_crl_is_checked_and_indexed(ca: Authority) -> None:
    crl = check_crl(crl_of(ca, (5, 9), number=4), URL, ca.certificate, T0)
    assert crl.revoked == frozenset({5, 9})
    assert crl.signer == signer_id(ca.certificate)
    assert crl.number == 4
    assert crl.this_update == T0 - 3600 and crl.next_update == T0 + 86400
    pem = x509.load_der_x509_crl(crl_of(ca, (5,))).public_bytes(Encoding.PEM)
    assert check_crl(pem, URL, ca.certificate, T0).revoked == frozenset({5})


def _reason(body: bytes, issuer: x509.Certificate, now: float = T0) -> str:
    with pytest.raises(CrlInvalid) as raised:
        check_crl(body, URL, issuer, now)
    return raised.value.reason


def test_a_crl_signed_by_another_key_is_refused(ca: Authority) -> None:
    impostor = new_key("ecdsa")
    assert _reason(crl_of(ca, key=impostor), ca.certificate) == "bad_signature"


def test_a_crl_from_another_issuer_is_refused(ca: Authority) -> None:
    other = Authority("other CA")
    assert _reason(crl_of(other), ca.certificate) == "wrong_issuer"


def test_a_ca_not_allowed_to_sign_crls_is_refused() -> None:
    key = new_key("ecdsa")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no crl signing")])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(3).not_valid_before(NOW)
                   .not_valid_after(NOW + dt.timedelta(days=1))
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, key_cert_sign=True, crl_sign=False,
                       content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, encipher_only=False,
                       decipher_only=False), critical=True)
                   .sign(key, hashes.SHA256()))
    signer = Authority(key=key, certificate=certificate)
    assert _reason(crl_of(signer), certificate) == "bad_signature"


@pytest.mark.parametrize(("this", "next_", "reason"), [
    (-7200, -60, "stale_crl"),
    (-7200, 0, "stale_crl"),
    (600, 86400, "crl_not_yet_valid"),
])
def test_a_crl_outside_its_validity_is_refused(ca: Authority, this: float, next_: float,
                                               reason: str) -> None:
    assert _reason(crl_of(ca, this=this, next_=next_), ca.certificate) == reason


def test_incomplete_crls_are_refused(ca: Authority) -> None:
    delta = crl_of(ca, extensions=(x509.DeltaCRLIndicator(3),), critical=True)
    assert _reason(delta, ca.certificate) == "delta_crl"
    for point in (
        x509.IssuingDistributionPoint(None, None, False, True, None, False, False),
        x509.IssuingDistributionPoint(None, None, False, False,
                                      frozenset({x509.ReasonFlags.key_compromise}), False,
                                      False),
        x509.IssuingDistributionPoint(_uri("http://crl.example.test/other.crl"), None, False,
                                      False, None, False, False),
    ):
        body = crl_of(ca, extensions=(point,), critical=True)
        assert _reason(body, ca.certificate) == "partial_crl"
    own = x509.IssuingDistributionPoint(_uri(URL), None, True, False, None, False, False)
    assert check_crl(crl_of(ca, (4,), extensions=(own,), critical=True), URL, ca.certificate,
                     T0).revoked == frozenset({4})


def test_garbage_is_not_a_crl(ca: Authority) -> None:
    assert _reason(b"<html>not found</html>", ca.certificate) == "not_a_crl"
    assert _reason(b"", ca.certificate) == "not_a_crl"


# ------------------------------------------------------------------ the cache over time

SIGNER = b"signer"
ISSUER = b"issuer"
POLICY = FetchPolicy(refresh=600.0, retry=30.0)


def checked(revoked: tuple[int, ...] = (), *, this: float = T0 - 60,
            next_: float | None = T0 + 3600, number: int | None = 1,
            signer: bytes = SIGNER) -> CheckedCrl:
    return CheckedCrl(signer, ISSUER, this, next_, number, frozenset(revoked))


def cert(serial: int = 1, urls: tuple[str, ...] = (URL,), signer: bytes | None = SIGNER
         ) -> ClientCert:
    return ClientCert(serial, ISSUER, signer, urls)


def test_nothing_to_fetch_or_no_known_issuer() -> None:
    cache = CrlCache()
    assert cache.decide(cert(urls=()), POLICY, T0).verdict == UNCHECKED
    decision = cache.decide(cert(signer=None), POLICY, T0)
    assert (decision.verdict, decision.reason) == (UNAVAILABLE, "issuer_not_in_client_ca")


def test_the_first_connection_fetches_and_the_crl_then_decides() -> None:
    cache = CrlCache()
    first = cache.decide(cert(), POLICY, T0)
    assert (first.verdict, first.url) == (FETCH, URL)
    cache.started(URL)
    assert cache.decide(cert(2), POLICY, T0 + 1).verdict == FETCH, "waits for the same fetch"
    assert cache.fetching(URL)
    assert cache.succeeded(URL, checked((2,)), T0 + 2) == ""
    assert not cache.fetching(URL)
    assert cache.decide(cert(1), POLICY, T0 + 3).verdict == GOOD
    revoked = cache.decide(cert(2), POLICY, T0 + 3)
    assert (revoked.verdict, revoked.url, revoked.refresh) == (REVOKED, URL, False)


def test_an_old_crl_is_used_and_refreshed_in_the_background() -> None:
    cache = CrlCache()
    cache.started(URL)
    cache.succeeded(URL, checked(), T0)
    assert not cache.decide(cert(), POLICY, T0 + 599).refresh
    decision = cache.decide(cert(), POLICY, T0 + 600)
    assert (decision.verdict, decision.refresh) == (GOOD, True)
    cache.started(URL)
    assert cache.decide(cert(), POLICY, T0 + 601) == decision.__class__(GOOD, url=URL), \
        "one refresh at a time, the old CRL answers meanwhile"
    cache.failed(URL, "timeout", T0 + 605)
    kept = cache.decide(cert(), POLICY, T0 + 606)
    assert (kept.verdict, kept.refresh) == (GOOD, False), "a failed refresh keeps the CRL"
    assert cache.decide(cert(), POLICY, T0 + 635).refresh, "retried after the pause"


def test_a_stale_crl_is_fetched_again_then_counts_as_unavailable() -> None:
    cache = CrlCache()
    cache.started(URL)
    cache.succeeded(URL, checked((1,), next_=T0 + 100), T0)
    assert cache.decide(cert(), POLICY, T0 + 99).verdict == REVOKED
    assert cache.decide(cert(), POLICY, T0 + 100).verdict == FETCH, "nextUpdate reached"
    cache.started(URL)
    cache.failed(URL, "connect_failed", T0 + 101)
    decision = cache.decide(cert(), POLICY, T0 + 102)
    assert (decision.verdict, decision.reason) == (UNAVAILABLE, "connect_failed")
    assert cache.decide(cert(), POLICY, T0 + 130).verdict == UNAVAILABLE
    assert cache.decide(cert(), POLICY, T0 + 131).verdict == FETCH, "after the retry pause"


def test_a_failed_url_falls_back_to_the_next_one() -> None:
    cache = CrlCache()
    both = cert(urls=(URL, MIRROR))
    cache.started(URL)
    cache.failed(URL, "http_404", T0)
    decision = cache.decide(both, POLICY, T0 + 1)
    assert (decision.verdict, decision.url) == (FETCH, MIRROR)
    cache.started(MIRROR)
    cache.failed(MIRROR, "timeout", T0 + 2)
    decision = cache.decide(both, POLICY, T0 + 3)
    assert (decision.verdict, decision.reason) == (UNAVAILABLE, "http_404")
    cache.started(MIRROR)
    cache.succeeded(MIRROR, checked(), T0 + 40)
    assert cache.decide(both, POLICY, T0 + 41).verdict == GOOD, "any current CRL decides"


def test_a_crl_older_than_the_one_held_is_refused() -> None:
    cache = CrlCache()
    cache.started(URL)
    cache.succeeded(URL, checked((1,), this=T0 - 60, number=5), T0)
    cache.started(URL)
    assert cache.succeeded(URL, checked((), this=T0 - 120, number=4), T0 + 1) == "older_crl"
    assert cache.decide(cert(), POLICY, T0 + 2).verdict == REVOKED
    cache.started(URL)
    assert cache.succeeded(URL, checked((), this=T0 - 10, number=3), T0 + 3) == "older_crl", \
        "a lower CRL number is older whatever its date"
    cache.started(URL)
    assert cache.succeeded(URL, checked((), this=T0 - 10, number=6), T0 + 4) == ""
    assert cache.decide(cert(), POLICY, T0 + 5).verdict == GOOD


def test_a_crl_of_another_ca_at_the_url_does_not_decide() -> None:
    cache = CrlCache()
    cache.started(URL)
    cache.succeeded(URL, checked(signer=b"someone else"), T0)
    cache.failed(URL, "wrong_issuer", T0 + 1)
    decision = cache.decide(cert(), POLICY, T0 + 2)
    assert (decision.verdict, decision.reason) == (UNAVAILABLE, "crl_signer_mismatch")


def test_the_least_recently_used_url_is_evicted() -> None:
    cache = CrlCache(max_urls=2)
    for url in ("http://a/", "http://b/"):
        cache.started(url)
        cache.succeeded(url, checked(), T0)
    cache.decide(cert(urls=("http://a/",)), POLICY, T0 + 1)  # a is now the most recent
    cache.started("http://c/")
    assert cache.decide(cert(urls=("http://a/",)), POLICY, T0 + 2).verdict == GOOD
    assert cache.decide(cert(urls=("http://b/",)), POLICY, T0 + 2).verdict == FETCH
    assert cache.succeeded("http://gone/", checked(), T0) == "evicted"
