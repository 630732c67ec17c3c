"""TLS client fingerprints (``fingerprints = true``) with real clients: Python's ``ssl``, curl,
``openssl s_client`` and headless Chromium.

Each client first connects to a capture socket that records its ClientHello and hangs up; the
JA4 computed from that capture must be what offload logs and sends the backend when the same
client, run the same way, connects to it. Where FoxIO publishes a fingerprint for the client
(its ja4plus-mapping.csv), that is checked too. Then the uses: rules, per-fingerprint limits
across addresses, and the header a client cannot forge.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from browser import dump_dom
from conftest import http_config, tcp_config
from harness import WAIT, Offload, client_context, echo, need, recv_all

from offload.proto.client_hello import client_hello_body
from offload.proto.fingerprint import Fingerprints

ON = "fingerprints = true\n"
PYTHON_PUBLISHED = "t13i181000_85036bcba153_d41ae481755e"
"""FoxIO's ja4plus-mapping.csv: "Python" without SNI; Python's ssl with OpenSSL 3.0 sends it."""
CHROMIUM_PUBLISHED_AB = "t13d1516h2_8daaf6152771"
"""FoxIO's ja4plus-mapping.csv: "Chromium Browser" (a and b; c changes with the signature
algorithms a Chromium version offers)."""

Client = Callable[[int, Path, str], bytes]
"""Runs a client against 127.0.0.1:port for ``path``; returns what it got (or b"")."""


def capture_hello(client: Client, ca: Path) -> bytes:
    """The ClientHello body ``client`` sends, read by a socket that then hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    listener.settimeout(WAIT)
    captured: list[bytes] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            listener.close()  # a retry is refused at once (a browser would wait on the backlog)
            with conn:
                conn.settimeout(WAIT)
                data = b""
                while (body := client_hello_body(data)) is None:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                captured.append(body)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        client(port, ca, "/capture")
    finally:
        thread.join(WAIT)
        listener.close()
    assert captured, "the client sent no ClientHello"
    return captured[0]


def python_client(port: int, ca: Path, path: str, source: str = "127.0.0.1",
                  headers: str = "") -> bytes:
    """Python's ssl with its defaults; no SNI (an IP address), as in FoxIO's published value."""
    with contextlib.suppress(ssl.SSLError, OSError), socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)) as raw, \
            client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}"
                    "Connection: close\r\n\r\n".encode())
        return recv_all(tls)
    return b""


def curl_client(port: int, ca: Path, path: str) -> bytes:
    result = subprocess.run(
        [need("curl", "curl"), "-sS", "--max-time", "10", "--cacert", str(ca),
         "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}{path}"],
        capture_output=True, timeout=20, check=False)
    return result.stdout


def s_client(port: int, ca: Path, path: str) -> bytes:
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    result = subprocess.run(
        [need("openssl", "openssl"), "s_client", "-quiet", "-connect", f"127.0.0.1:{port}",
         "-servername", "localhost", "-CAfile", str(ca)],
        input=request, capture_output=True, timeout=20, check=False)
    return result.stdout


def chromium_client(port: int, ca: Path, path: str) -> bytes:
    return dump_dom(f"https://localhost:{port}{path}", budget_ms=1000, timeout=60,
                    flags=("--ignore-certificate-errors",)).encode()


CLIENTS: dict[str, Client] = {
    "python": python_client, "curl": curl_client, "s_client": s_client,
    "chromium": chromium_client,
}


def access_line(instance: Offload, path: str) -> dict[str, object]:
    return instance.wait_for(lambda e: e.get("path") == path and "status" in e)


@pytest.fixture
def fingerprinted(localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=ON))
    return server, instance


# ------------------------------------------------------------------ real clients


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_a_real_clients_fingerprint_is_logged_and_sent(pki, fingerprinted, port, name):
    server, instance = fingerprinted
    client = CLIENTS[name]
    expected = Fingerprints(capture_hello(client, pki.ca))
    path = f"/fingerprint-{name}"
    assert b"ok" in client(port, pki.ca, path)
    line = access_line(instance, path)
    assert line["status"] == 200
    assert line["ja4"] == expected.ja4
    assert "ja3" not in line  # JA3 is computed only for frontends that read it
    (received,) = [r for r in server.requests if r.target == path]
    assert received.headers_named("X-JA4") == [expected.ja4]
    assert received.header("X-JA3") is None  # not sent unless ja3_header names it
    if name == "python" and ssl.OPENSSL_VERSION_INFO[:2] == (3, 0):
        assert line["ja4"] == PYTHON_PUBLISHED
    if name == "chromium":
        assert str(line["ja4"]).startswith(CHROMIUM_PUBLISHED_AB + "_")


# ------------------------------------------------------------------ the header


def test_a_client_cannot_forge_the_fingerprint_header(pki, localhost_bundle, http_backend,
                                                      offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend=ON + 'ja3_header = "X-JA3"\n'))
    expected = Fingerprints(capture_hello(python_client, pki.ca), with_ja3=True)
    python_client(port, pki.ca, "/forged",
                  headers="X-JA4: t13d1516h2_8daaf6152771_e5627efa2ab1\r\nx-ja3: 0\r\n"
                          "Connection: X-JA4\r\n")
    (received,) = [r for r in server.requests if r.target == "/forged"]
    assert received.headers_named("X-JA4") == [expected.ja4]
    assert received.headers_named("X-JA3") == [expected.ja3]
    access_line(instance, "/forged")


def test_without_fingerprints_nothing_is_kept_and_the_header_still_dropped(
        pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address]))
    python_client(port, pki.ca, "/off", headers="X-JA4: forged\r\n")
    (received,) = [r for r in server.requests if r.target == "/off"]
    assert received.headers_named("X-JA4") == []
    assert access_line(instance, "/off")["ja4"] is None


# ------------------------------------------------------------------ rules and limits


def test_a_rule_denies_a_fingerprint_from_any_address(pki, localhost_bundle, http_backend,
                                                      offload, port):
    server = http_backend()
    tool = Fingerprints(capture_hello(python_client, pki.ca)).ja4
    browser = Fingerprints(capture_hello(curl_client, pki.ca), with_ja3=True).ja3
    assert tool is not None and browser is not None
    rules = (f'\n[[frontends.inspect.rules]]\nname = "tool"\naction = "deny"\nja4 = ["{tool}"]\n'
             f'\n[[frontends.inspect.rules]]\nname = "old-list"\naction = "tag"\n'
             f'ja3 = ["{browser}"]\n')
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend=ON + rules))
    for index, source in enumerate(("127.0.0.1", "127.0.0.2", "127.0.0.3")):
        answer = python_client(port, pki.ca, f"/tool-{index}", source=source)
        assert answer.startswith(b"HTTP/1.1 403 ")
        assert access_line(instance, f"/tool-{index}")["reason"] == "rule_denied:tool"
    assert b"ok" in curl_client(port, pki.ca, "/browser")  # another fingerprint
    assert [r.target for r in server.requests] == ["/browser"]
    # A JA3 rule: JA3 is computed for this frontend (and only for it) since a rule reads it.
    assert server.requests[0].header("X-Offload-Tag") == "old-list"


def test_a_fingerprint_request_rate_spans_addresses(pki, localhost_bundle, http_backend, offload,
                                                    port):
    server = http_backend()
    instance = offload(http_config(
        port, [localhost_bundle], [server.address],
        frontend=ON + 'limits = { request_rate_per_fingerprint = "1/m burst 2" }\n'))
    assert python_client(port, pki.ca, "/a", source="127.0.0.1").startswith(b"HTTP/1.1 200 ")
    assert python_client(port, pki.ca, "/b", source="127.0.0.2").startswith(b"HTTP/1.1 200 ")
    refused = python_client(port, pki.ca, "/c", source="127.0.0.3")  # a new address, same tool
    assert refused.startswith(b"HTTP/1.1 429 ")
    assert access_line(instance, "/c")["reason"] == "per_fingerprint_request_rate"
    assert b"ok" in curl_client(port, pki.ca, "/d")  # another fingerprint has its own budget
    event = instance.wait_for(lambda e: e.get("event") == "rate_limited"
                              and e.get("cause") == "per_fingerprint_request_rate")
    assert event["client"] == "127.0.0.3"


def test_a_fingerprint_handshake_rate_refuses_before_the_handshake(pki, localhost_bundle,
                                                                  backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(
        port, [localhost_bundle], [server.address],
        frontend=ON + 'limits = { handshake_rate_per_fingerprint = "1/m burst 1" }\n'))
    context = client_context(pki.ca)

    def handshake(source: str, ctx: ssl.SSLContext) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=10,
                                      source_address=(source, 0)) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"ping")
                    return tls.recv(10) == b"ping"
            except (ssl.SSLError, OSError):
                return False

    assert handshake("127.0.0.1", context)
    assert not handshake("127.0.0.2", client_context(pki.ca))  # same fingerprint, new address
    other = client_context(pki.ca, alpn=["x-other"])  # another fingerprint (its ALPN)
    assert handshake("127.0.0.3", other)
    instance.wait_for(lambda e: e.get("event") == "connection_refused"
                      and e.get("cause") == "per_fingerprint_handshake_rate"
                      and e.get("client") == "127.0.0.2")
    closed = instance.wait_for(lambda e: e.get("msg") == "connection closed")
    assert str(closed["ja4"]).startswith("t13i")
