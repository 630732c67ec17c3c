"""TLS policies: protocol versions, cipher suites and options for every server context.

``intermediate`` (the default) follows Mozilla's intermediate profile minus the DHE suites
(ECDHE and AEAD only); ``modern`` is TLS 1.3 only; ``legacy`` also allows TLS 1.0/1.1 with CBC
suites and static-RSA key exchange for old clients (like Mozilla's "old") and is announced with
a warning at start. Every policy disables TLS compression and client-initiated renegotiation,
turns session resumption on, lets the client choose among the suites it shares with the server
(Mozilla's current guidance: a client without AES hardware puts ChaCha20 first, one with it
AES-GCM) and accepts only the key-exchange groups of :mod:`offload.tls.groups`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from offload.tls.ca_bundle import CaBundle
from offload.tls.groups import restrict_groups

INTERMEDIATE_TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
))

LEGACY_EXTRA_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
))


@dataclass(frozen=True)
class TlsPolicy:
    """What one policy name stands for."""

    name: str
    minimum: ssl.TLSVersion
    ciphers: str
    """TLS 1.2 and older suites (TLS 1.3 uses OpenSSL's three default suites)."""
    warning: str = ""


POLICIES = {
    "modern": TlsPolicy("modern", ssl.TLSVersion.TLSv1_3, INTERMEDIATE_TLS12_CIPHERS),
    "intermediate": TlsPolicy("intermediate", ssl.TLSVersion.TLSv1_2,
                              INTERMEDIATE_TLS12_CIPHERS),
    "legacy": TlsPolicy(
        "legacy",
        ssl.TLSVersion.TLSv1,
        # OpenSSL 3 needs security level 0 to sign TLS 1.0/1.1 handshakes with SHA-1.
        f"{INTERMEDIATE_TLS12_CIPHERS}:{LEGACY_EXTRA_CIPHERS}:@SECLEVEL=0",
        warning="tls_policy \"legacy\" allows TLS 1.0 and 1.1 and CBC cipher suites; "
        "use it only for clients that cannot do TLS 1.2",
    ),
}


@dataclass(frozen=True)
class ClientAuth:
    """Ask clients for a certificate and check it against these CAs (and CRLs, if any)."""

    required: bool
    authorities: CaBundle
    """Every CA certificate, read once by the supervisor."""
    crl_files: tuple[str, ...] = ()
    """PEM CRL files: with any, a revoked or uncovered client certificate is refused."""

    def apply(self, context: ssl.SSLContext) -> None:
        context.verify_mode = ssl.CERT_REQUIRED if self.required else ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=self.authorities.pem)
        for path in self.crl_files:
            context.load_verify_locations(cafile=path)
        if self.crl_files:
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context(policy_name: str, alpn: tuple[str, ...] = (),
                   client_auth: ClientAuth | None = None) -> ssl.SSLContext:
    """A server-side context with the policy applied and no certificate loaded yet."""
    policy = POLICIES[policy_name]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = policy.minimum
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(policy.ciphers)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    # The client's order wins, in TLS 1.3 and 1.2 alike: it knows whether it has AES hardware.
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options &= ~ssl.OP_NO_TICKET
    # One TLS 1.3 ticket per handshake: clients keep one anyway, and each costs CPU.
    context.num_tickets = 1
    context.verify_mode = ssl.CERT_NONE
    if client_auth is not None:
        client_auth.apply(context)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    restrict_groups(context)  # when it cannot, offload warned at start (groups_problem)
    return context
