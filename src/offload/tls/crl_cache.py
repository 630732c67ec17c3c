"""Fetched CRLs for client certificates: which URLs a certificate names, whether a fetched CRL
may be used, and the decision for one connection (sans-IO; the wall clock is passed in).

Theory of operation. A client certificate names the http:// URLs of its CRL (its CRL
distribution points, RFC 5280 §4.2.1.13). The cache keeps, per URL, the last CRL that passed
every check of :func:`check_crl` and the time of the last failed fetch. For a certificate, the
first URL holding a current CRL signed by the certificate's issuer decides:

    the URL's entry                           decision
    current CRL by the certificate's issuer   REVOKED or GOOD (older than ``refresh``: also
                                              fetch it again in the background)
    no usable CRL, fetch in flight or allowed FETCH it (the connection waits for it)
    no usable CRL, failed within ``retry``    try the next URL; after the last: UNAVAILABLE

A CRL is usable from its thisUpdate until its nextUpdate (RFC 5280 §5.1.2.4-5); past that it is
stale and counts as unavailable, like OpenSSL's "CRL has expired". A failed fetch keeps the
previous CRL while it is current. Only the client certificate itself is checked (OpenSSL's
``VERIFY_CRL_CHECK_LEAF``, as with ``client_crl``); complete CRLs only (no delta, partitioned
by reason or indirect CRLs); LDAP and HTTPS distribution points are ignored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from offload.tls.ca_bundle import signer_id

GOOD, REVOKED, FETCH, UNAVAILABLE, UNCHECKED = "good", "revoked", "fetch", "unavailable", \
    "unchecked"
MAX_URLS = 1024
"""CRL URLs cached per worker; the least recently used goes first."""
MAX_URL_LENGTH = 2048


class CrlInvalid(Exception):
    """A fetched CRL that must not be used; ``reason`` is short, for counters and logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """One frontend's bounds on fetching (the config's ``client_crl_*`` keys)."""

    hard_fail: bool = True
    timeout: float = 5.0
    max_size: int = 10 * 1024 * 1024
    refresh: float = 3600.0
    retry: float = 30.0


@dataclass(frozen=True, slots=True)
class ClientCert:
    """What the decision needs from a verified client certificate."""

    serial: int
    issuer: bytes
    """Its issuer's name, DER."""
    signer: bytes | None
    """:func:`signer_id` of the client CA that signed it; None if that CA is not configured."""
    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CheckedCrl:
    """A CRL that passed :func:`check_crl`."""

    signer: bytes
    issuer: bytes
    this_update: float
    next_update: float | None
    number: int | None
    revoked: frozenset[int]

    def current(self, now: float) -> bool:
        return self.this_update <= now and (self.next_update is None or now < self.next_update)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: str
    """GOOD, REVOKED, FETCH (``url``; ask again once it is done), UNAVAILABLE or UNCHECKED."""
    reason: str = ""
    """Why UNAVAILABLE (the last failure) or UNCHECKED."""
    url: str = ""
    """FETCH: the URL to fetch (or to wait for); GOOD/REVOKED: the URL whose CRL decided."""
    refresh: bool = False
    """GOOD/REVOKED: also fetch ``url`` again in the background."""


def distribution_points(certificate: x509.Certificate) -> tuple[str, ...]:
    """The http:// URLs of the complete CRL for ``certificate``, in its order."""
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return ()
    except ValueError:  # a malformed extension: treated as none (OpenSSL verified the rest)
        return ()
    urls: list[str] = []
    for point in points:
        if point.full_name is None or point.reasons is not None or point.crl_issuer is not None:
            continue  # relative names, partial and indirect CRLs are not supported
        for name in point.full_name:
            if isinstance(name, x509.UniformResourceIdentifier) and _fetchable(name.value):
                urls.append(name.value)
    return tuple(dict.fromkeys(urls))


def _fetchable(url: str) -> bool:
    return (url[:7].lower() == "http://" and len(url) <= MAX_URL_LENGTH
            and all("\x21" <= char <= "\x7e" for char in url))


def _posix(moment: dt.datetime) -> float:
    return moment.timestamp()


def check_crl(body: bytes, url: str, issuer: x509.Certificate, now: float) -> CheckedCrl:
    """Parse and check a CRL fetched from ``url`` for certificates ``issuer`` signed: DER (or
    PEM), signed by ``issuer``'s key, complete, for end-entity certificates, current.
    Raises :class:`CrlInvalid`. Costs a signature check and a pass over the entries."""
    try:
        crl = (x509.load_pem_x509_crl(body) if body.lstrip().startswith(b"-----BEGIN")
               else x509.load_der_x509_crl(body))
        extensions = crl.extensions
    except ValueError as error:
        raise CrlInvalid("not_a_crl", str(error)) from None
    if crl.issuer != issuer.subject:
        raise CrlInvalid("wrong_issuer", crl.issuer.rfc4514_string())
    _check_crl_signer(issuer)
    public_key = issuer.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                      | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise CrlInvalid("bad_signature", "unsupported CA key type")
    if not crl.is_signature_valid(public_key):
        raise CrlInvalid("bad_signature")
    number: int | None = None
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.DeltaCRLIndicator):
            raise CrlInvalid("delta_crl")
        if isinstance(value, x509.IssuingDistributionPoint):
            _check_scope(value, url)
        elif isinstance(value, x509.CRLNumber):
            number = value.crl_number
        elif extension.critical and isinstance(value, x509.UnrecognizedExtension):
            raise CrlInvalid("unknown_critical_extension", extension.oid.dotted_string)
    this_update = _posix(crl.last_update_utc)
    next_update = crl.next_update_utc
    checked = CheckedCrl(signer_id(issuer), issuer.subject.public_bytes(), this_update,
                         None if next_update is None else _posix(next_update), number,
                         frozenset(entry.serial_number for entry in crl))
    if this_update > now:
        raise CrlInvalid("crl_not_yet_valid")
    if not checked.current(now):
        raise CrlInvalid("stale_crl", f"nextUpdate was {next_update}")
    return checked


def _check_crl_signer(issuer: x509.Certificate) -> None:
    """RFC 5280 §4.2.1.3: a CA whose key usage omits cRLSign cannot sign CRLs."""
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.crl_sign:
        raise CrlInvalid("bad_signature", "the CA's key usage does not allow signing CRLs")


def _check_scope(point: x509.IssuingDistributionPoint, url: str) -> None:
    """RFC 5280 §5.2.5: the CRL must cover end-entity certificates for every reason, and say
    it is the CRL of the URL it came from when it names any."""
    if (point.only_contains_ca_certs or point.only_contains_attribute_certs
            or point.indirect_crl or point.only_some_reasons is not None):
        raise CrlInvalid("partial_crl")
    if point.full_name is not None:
        names = {name.value for name in point.full_name
                 if isinstance(name, x509.UniformResourceIdentifier)}
        if names and url not in names:
            raise CrlInvalid("partial_crl", "its distribution point is not the URL fetched")


@dataclass(slots=True)
class _Entry:
    crl: CheckedCrl | None = None
    fetched_at: float = 0.0
    """When ``crl`` was fetched."""
    failed_at: float | None = None
    failure: str = ""
    fetching: bool = False


class CrlCache:
    """The CRLs of one worker, shared by every connection and frontend, keyed by URL."""

    def __init__(self, max_urls: int = MAX_URLS) -> None:
        self._entries: dict[str, _Entry] = {}
        self._max_urls = max_urls

    def decide(self, cert: ClientCert, policy: FetchPolicy, now: float) -> Decision:
        """What to do with a connection presenting ``cert``."""
        if not cert.urls:
            return Decision(UNCHECKED, "no_distribution_point")
        if cert.signer is None:
            return Decision(UNAVAILABLE, "issuer_not_in_client_ca")
        entries = self._entries
        reason = ""
        for url in cert.urls:  # a current CRL from any of the URLs decides
            entry = entries.get(url)
            crl = entry.crl if entry is not None else None
            if entry is None or crl is None or not crl.current(now):
                continue
            if crl.signer != cert.signer or crl.issuer != cert.issuer:
                reason = "crl_signer_mismatch"  # that URL serves another CA's CRL
                continue
            self._touch(url, entry)
            refresh = (now - entry.fetched_at >= policy.refresh and not entry.fetching
                       and self._may_retry(entry, policy, now))
            verdict = REVOKED if cert.serial in crl.revoked else GOOD
            return Decision(verdict, url=url, refresh=refresh)
        for url in cert.urls:  # else the first that may be fetched
            entry = entries.get(url)
            if entry is None or entry.fetching or self._may_retry(entry, policy, now):
                return Decision(FETCH, url=url)
            reason = reason or entry.failure or "stale_crl"
        return Decision(UNAVAILABLE, reason)

    @staticmethod
    def _may_retry(entry: _Entry, policy: FetchPolicy, now: float) -> bool:
        return entry.failed_at is None or now - entry.failed_at >= policy.retry

    def _touch(self, url: str, entry: _Entry) -> None:
        """Mark ``url`` as the most recently used."""
        del self._entries[url]
        self._entries[url] = entry

    def fetching(self, url: str) -> bool:
        entry = self._entries.get(url)
        return entry is not None and entry.fetching

    def started(self, url: str) -> None:
        """A fetch of ``url`` begins (the caller runs at most one per URL)."""
        entry = self._entries.get(url)
        if entry is None:
            self._evict()
            entry = self._entries[url] = _Entry()
        entry.fetching = True

    def _evict(self) -> None:
        while len(self._entries) >= self._max_urls:
            victim = next((url for url, entry in self._entries.items() if not entry.fetching),
                          None)
            if victim is None:
                return
            del self._entries[victim]

    def succeeded(self, url: str, crl: CheckedCrl, now: float) -> str:
        """A fetch of ``url`` brought a checked CRL; returns "" when it was taken, else why
        not (a CRL older than the one held: a lagging mirror must not undo a revocation)."""
        entry = self._entries.get(url)
        if entry is None:
            return "evicted"
        entry.fetching = False
        held = entry.crl
        if held is not None and held.signer == crl.signer and (
                crl.this_update < held.this_update or (
                    crl.number is not None and held.number is not None
                    and crl.number < held.number)):
            entry.failed_at, entry.failure = now, "older_crl"
            return "older_crl"
        entry.crl, entry.fetched_at = crl, now
        entry.failed_at, entry.failure = None, ""
        return ""

    def failed(self, url: str, reason: str, now: float) -> None:
        """A fetch of ``url`` failed; the CRL held (if any) stays while it is current."""
        entry = self._entries.get(url)
        if entry is not None:
            entry.fetching = False
            entry.failed_at, entry.failure = now, reason
