"""The client CA bundle: a certificate's issuer by signature, and the chain for RFC 9440's
Client-Cert-Chain rebuilt from the configured CAs."""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from offload.demo.pki import Authority
from offload.tls.ca_bundle import CaBundle
from offload.tls.client_certs import identity_fields


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def fingerprint(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(der(certificate)).digest()


def chain(bundle: CaBundle, leaf: x509.Certificate) -> tuple[bytes, ...] | None:
    return bundle.chain_above(leaf, fingerprint(leaf))


def test_a_leaf_of_the_root_has_an_empty_chain() -> None:
    root = Authority("root")
    leaf = root.issue(["c"], client=True).certificate
    bundle = CaBundle([root.certificate])
    assert chain(bundle, leaf) == ()
    assert bundle.issuer_of(leaf, fingerprint(leaf)) == 0


def test_the_chain_runs_from_the_issuer_up_without_the_trust_anchor() -> None:
    root = Authority("root")
    middle = root.intermediate("middle")
    lowest = middle.intermediate("lowest")
    leaf = lowest.issue(["c"], client=True).certificate
    bundle = CaBundle([root.certificate, lowest.certificate, middle.certificate])
    assert chain(bundle, leaf) == (der(lowest.certificate), der(middle.certificate))
    assert chain(bundle, middle.issue(["c"], client=True).certificate) == (
        der(middle.certificate),)


def test_no_chain_when_a_link_is_missing_from_the_bundle() -> None:
    root = Authority("root")
    middle = root.intermediate("middle")
    lowest = middle.intermediate("lowest")
    leaf = lowest.issue(["c"], client=True).certificate
    assert chain(CaBundle([root.certificate]), leaf) is None, "issuer sent by the client only"
    assert chain(CaBundle([root.certificate, lowest.certificate]), leaf) is None, \
        "a gap above the issuer"
    assert chain(CaBundle([lowest.certificate]), leaf) is None, "no trust anchor on top"


def test_the_issuer_is_found_by_signature_not_by_name() -> None:
    first, second = Authority("same name"), Authority("same name")
    leaf = second.issue(["c"], client=True).certificate
    bundle = CaBundle([first.certificate, second.certificate])
    assert bundle.issuer_of(leaf, fingerprint(leaf)) == 1
    assert bundle.issuer_of(leaf, fingerprint(leaf)) == 1, "remembered"
    stranger = Authority("same name").issue(["c"], client=True).certificate
    assert bundle.issuer_of(stranger, fingerprint(stranger)) is None


def test_client_cert_chain_is_sent_with_the_intermediates() -> None:
    root = Authority("root")
    middle = root.intermediate("middle")
    leaf = middle.issue(["c"], client=True).certificate
    fields = identity_fields(der(leaf), CaBundle([root.certificate, middle.certificate]))
    expected = b":" + base64.b64encode(der(middle.certificate)) + b":"
    assert fields[1] == (b"Client-Cert-Chain", expected), "right after Client-Cert (RFC 9440 §2.3)"

    def names(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
        return [name for name, _ in fields]

    assert b"Client-Cert-Chain" not in names(identity_fields(der(leaf))), "no bundle, no chain"
    assert b"Client-Cert-Chain" not in names(identity_fields(
        der(leaf), CaBundle([root.certificate]))), "a chain that cannot be rebuilt is left out"
    direct = root.issue(["c"], client=True).certificate
    assert b"Client-Cert-Chain" not in names(identity_fields(
        der(direct), CaBundle([root.certificate]))), "an empty chain is no field"
