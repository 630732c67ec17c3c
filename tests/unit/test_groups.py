"""Key-exchange groups of the server contexts (offload.tls.groups), from a Python client.

A client context limited to one curve (``set_ecdh_curve``) offers only that group; the server
must accept X25519, P-256 and P-384 and refuse the rest. FFDHE, which Python's client cannot
offer, is checked with openssl s_client in tests/integration/test_tls_negotiation.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from tls_helpers import client_context, handshake, issued, load_issued, policy_context

from offload.tls.certs import LoadedCertificate, load_into_context
from offload.tls.groups import SERVER_GROUPS, groups_problem, restrict_groups

POLICIES = ["intermediate", "modern", "legacy"]


@pytest.fixture
def certificate(tmp_path: Path) -> LoadedCertificate:
    return load_issued(tmp_path, "groups.pem", issued(("groups.example.com",)))


def _client(curve: str) -> ssl.SSLContext:
    context = client_context()
    context.set_ecdh_curve(curve)
    return context


def test_the_bridge_works_on_this_python() -> None:
    """CI runs on the CPython + shared libssl the bridge is built for: it must not fall back."""
    assert groups_problem() is None
    assert SERVER_GROUPS == ("X25519", "P-256", "P-384")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("curve", ["prime256v1", "secp384r1"])
def test_accepted_curves(policy: str, curve: str, certificate: LoadedCertificate) -> None:
    server = policy_context(policy)
    load_into_context(server, certificate)
    client, _ = handshake(_client(curve), server, "groups.example.com")
    assert client.version() == "TLSv1.3"


@pytest.mark.parametrize("policy", POLICIES)
def test_p521_is_refused(policy: str, certificate: LoadedCertificate) -> None:
    """OpenSSL's default list has P-521; the server's key share check must now fail."""
    server = policy_context(policy)
    load_into_context(server, certificate)
    with pytest.raises(ssl.SSLError, match="NO_SUITABLE_KEY_SHARE"):
        handshake(_client("secp521r1"), server, "groups.example.com")
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # OpenSSL's defaults: the client is fine
    load_into_context(plain, certificate)
    client, _ = handshake(_client("secp521r1"), plain, "groups.example.com")
    assert client.version() == "TLSv1.3"


def test_an_unknown_group_is_reported_not_raised() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert restrict_groups(context, ("X25519", "no-such-group")) is not None


def test_the_pointer_check_follows_the_options_python_set() -> None:
    """The SSL_CTX read from the object must agree with Python's view of the context."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert restrict_groups(context) is None
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.options |= ssl.OP_NO_TICKET
    assert restrict_groups(other) is None  # OpenSSL reads the same options Python set
