"""What a handshake negotiates, checked from the client's side with openssl s_client and
Python's ssl: ALPN refusal (RFC 7301 §3.2), the client's cipher order, the accepted groups."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from conftest import http_config, tcp_config
from harness import client_context, tls_connect
from test_tls import _pong, s_client

POLICIES = ["intermediate", "modern", "legacy"]
NO_ALPN_ALERT = "no application protocol"  # s_client's words for alert 120


@pytest.fixture
def tcp_offload(pki, localhost_bundle, backend, offload, port):
    def start(frontend: str = ""):
        server = backend(_pong)
        return offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend=frontend)), server

    return start


# ------------------------------------------------------------------ ALPN


def test_http_frontend_refuses_a_client_offering_only_h2(pki, localhost_bundle, http_backend,
                                                         offload, port):
    """An h2-only client must hear no_application_protocol, not get an HTTP/1.1 server it
    never asked for (nginx answers the same)."""
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address]))
    result = s_client(port, pki.ca, "-alpn", "h2", send=b"GET / HTTP/1.1\r\n\r\n")
    assert result.returncode != 0
    assert NO_ALPN_ALERT in result.stderr, result.stderr
    assert "alert number 120" in result.stderr
    failed = instance.wait_msg("handshake failed")
    assert failed["reason"] == "no_application_protocol"
    assert server.requests == []

    with pytest.raises(ssl.SSLError, match="alert no application protocol"), \
            tls_connect(port, client_context(pki.ca, alpn=["h2", "spdy/3"])):
        pass


def test_http_frontend_still_serves_clients_with_or_without_alpn(pki, localhost_bundle,
                                                                 http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    with tls_connect(port, client_context(pki.ca, alpn=["h2", "http/1.1"])) as tls:
        assert tls.selected_alpn_protocol() == "h2"
    with tls_connect(port, client_context(pki.ca)) as tls:
        assert tls.selected_alpn_protocol() is None
    result = s_client(port, pki.ca, "-alpn", "foo,http/1.1",
                      send=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 200" in result.stdout


def test_tcp_frontend_without_alpn_ignores_the_extension(pki, tcp_offload, port):
    tcp_offload()
    result = s_client(port, pki.ca, "-alpn", "foo")
    assert result.returncode == 0, result.stderr
    assert "pong:ping" in result.stdout


def test_tcp_frontend_with_alpn_refuses_other_protocols(pki, tcp_offload, port):
    instance, server = tcp_offload(frontend='alpn = ["imap"]')
    refused = s_client(port, pki.ca, "-alpn", "foo,bar")
    assert refused.returncode != 0
    assert NO_ALPN_ALERT in refused.stderr, refused.stderr
    assert instance.wait_msg("handshake failed")["reason"] == "no_application_protocol"
    assert server.connections == []
    served = s_client(port, pki.ca, "-alpn", "foo,imap")
    assert served.returncode == 0, served.stderr
    with tls_connect(port, client_context(pki.ca, alpn=["foo", "imap"])) as tls:
        assert tls.selected_alpn_protocol() == "imap"
    without = s_client(port, pki.ca)
    assert without.returncode == 0, without.stderr


def test_refusal_works_on_a_hello_split_across_reads(pki, tcp_offload, port):
    """The name search misses on a partial first read; the parse must still refuse.

    (If the two pieces arrive in one read, the answer must be the same: the pause only makes
    the split path likely, the assertion holds either way.)"""
    tcp_offload(frontend='alpn = ["imap"]')
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = client_context(pki.ca, alpn=["foo"])
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.sendall(hello[:20])
        time.sleep(0.2)  # likely two reads on the proxy's side (see the docstring)
        raw.sendall(hello[20:])
        answer = raw.recv(100)
    assert answer == bytes([21, 3, 3, 0, 2, 2, 120]), answer


# ------------------------------------------------------------------ cipher order


@pytest.mark.parametrize("policy", ["intermediate", "legacy"])
@pytest.mark.parametrize("first", ["ECDHE-ECDSA-CHACHA20-POLY1305",
                                   "ECDHE-ECDSA-AES128-GCM-SHA256",
                                   "ECDHE-ECDSA-AES256-GCM-SHA384"])
def test_tls12_client_picks_the_suite(pki, tcp_offload, port, policy, first):
    """Mozilla's guidance: the client chooses (it knows whether it has AES hardware)."""
    tcp_offload(frontend=f'tls_policy = "{policy}"')
    others = [suite for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                  "ECDHE-ECDSA-CHACHA20-POLY1305") if suite != first]
    result = s_client(port, pki.ca, "-tls1_2", "-cipher", ":".join([first, *others]))
    assert result.returncode == 0, result.stderr
    assert f"Ciphersuite: {first}" in result.stderr


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("order", [
    ("TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"),
    ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"),
])
def test_tls13_client_picks_the_suite(pki, tcp_offload, port, policy, order):
    tcp_offload(frontend=f'tls_policy = "{policy}"')
    result = s_client(port, pki.ca, "-tls1_3", "-ciphersuites", ":".join(order))
    assert result.returncode == 0, result.stderr
    assert f"Ciphersuite: {order[0]}" in result.stderr


def test_python_client_order_is_followed(pki, tcp_offload, port):
    tcp_offload()
    context = client_context(pki.ca, maximum=ssl.TLSVersion.TLSv1_2,
                             ciphers="ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256")
    with tls_connect(port, context) as tls:
        assert tls.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"


# ------------------------------------------------------------------ groups


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("group", ["ffdhe2048", "ffdhe3072", "ffdhe8192", "X448", "P-521"])
def test_other_groups_are_refused(pki, tcp_offload, port, policy, group):
    instance, _ = tcp_offload(frontend=f'tls_policy = "{policy}"')
    result = s_client(port, pki.ca, "-tls1_3", "-groups", group)
    assert result.returncode != 0, f"{group} was accepted"
    assert "handshake failure" in result.stderr, result.stderr
    assert instance.wait_msg("handshake failed")["reason"] == "no_shared_cipher"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("group", "shown"), [("X25519", "X25519"), ("P-256", "prime256v1"),
                                              ("P-384", "secp384r1")])
def test_the_three_groups_are_accepted(pki, tcp_offload, port, policy, group, shown):
    tcp_offload(frontend=f'tls_policy = "{policy}"')
    result = s_client(port, pki.ca, "-tls1_3", "-groups", group)
    assert result.returncode == 0, result.stderr
    assert "pong:ping" in result.stdout
    temp_key = [line for line in result.stderr.splitlines() if "Server Temp Key" in line]
    assert temp_key and shown in temp_key[0], result.stderr


@pytest.mark.parametrize("policy", ["intermediate", "legacy"])
def test_tls12_ecdhe_uses_the_same_groups(pki, tcp_offload, port, policy):
    """In TLS 1.2 the client's list also names the curves it accepts for the (P-256)
    certificate, so P-256 stays in every list; P-521 and X448 are passed over."""
    tcp_offload(frontend=f'tls_policy = "{policy}"')
    for groups, shown in (("P-521:X448:P-256", "prime256v1"), ("P-521:P-384:P-256", "secp384r1"),
                          ("X448:X25519:P-256", "X25519")):
        result = s_client(port, pki.ca, "-tls1_2", "-groups", groups)
        assert result.returncode == 0, result.stderr
        temp_key = [line for line in result.stderr.splitlines() if "Server Temp Key" in line]
        assert temp_key and shown in temp_key[0], (groups, result.stderr)
